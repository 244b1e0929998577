// Command demo runs l4lb on the DC/OS documentation's example app in
// network namespaces it creates and removes: an agent, three backends
// serving HTTP, l4lb programming the agent's nftables, and curl reaching
// myservice.marathon.l4lb.thisdcos.directory:6666 by name. Nothing in the
// root namespace changes. Run it with `make demo` (root).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/l4lb/l4lb/internal/netns"
)

const vipName = "myservice.marathon.l4lb.thisdcos.directory"

func main() {
	bin := flag.String("l4lb", "bin/l4lb", "the l4lb binary")
	apps := flag.String("apps", "examples/demo-apps.json", "the Marathon apps to load")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *bin, *apps); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func step(format string, args ...any) {
	fmt.Printf("\n\033[1m== "+format+"\033[0m\n", args...)
}

// show runs a command inside a namespace and prints it with its output.
func show(ns *netns.NS, name string, args ...string) (string, error) {
	fmt.Printf("$ %s %s\n", name, strings.Join(args, " "))
	out, err := ns.Run(name, args...)
	fmt.Print(out)
	return out, err
}

func run(ctx context.Context, bin, appsFile string) error {
	if os.Geteuid() != 0 {
		return errors.New("the demo creates network namespaces: run it as root (make demo)")
	}
	abs, err := filepath.Abs(bin)
	if err != nil {
		return err
	}
	apps, err := os.ReadFile(appsFile)
	if err != nil {
		return err
	}

	step("Building the namespaces: an agent and three backends on 198.19.0.0/24")
	topo, err := netns.NewTopology("l4demo", 3, 0)
	if err != nil {
		return err
	}
	defer func() {
		step("Removing the namespaces")
		if err := topo.Delete(); err != nil {
			fmt.Fprintln(os.Stderr, "cleanup:", err)
		}
		fmt.Println("done: nothing is left behind")
	}()
	agent := topo.Agent
	fmt.Printf("agent %s (198.19.0.1); backends:", agent.Name)
	for _, b := range topo.Backends {
		fmt.Printf(" %s (%s)", b.Name, b.Addr4)
	}
	fmt.Println()

	// The tasks of the example app run on the backends: port 31000 serves the
	// VIP on 6666, port 31001 the VIP on 7777.
	for i, b := range topo.Backends {
		for _, port := range []uint16{31000, 31001} {
			ap := netip.AddrPortFrom(b.Addr4, port)
			msg := fmt.Sprintf("hello from task myservice.%d on %s\n", i+1, ap)
			var ln net.Listener
			if err := b.Do(func() (err error) { ln, err = net.Listen("tcp", ap.String()); return err }); err != nil {
				return err
			}
			srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, msg) }),
				ReadHeaderTimeout: 5 * time.Second}
			go srv.Serve(ln)
			defer srv.Close()
		}
	}

	dir, err := os.MkdirTemp("", "l4lb-demo")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	appsPath := filepath.Join(dir, "apps.json")
	if err := os.WriteFile(appsPath, apps, 0o644); err != nil {
		return err
	}
	step("The DC/OS documentation's example app, with three running tasks (%s)", appsFile)
	fmt.Print(string(apps))

	step("Starting l4lb in the agent namespace")
	args := []string{"run", "--source", "file:" + appsPath, "--vip-pool", "198.18.0.0/16", "--vip-pool6", "fd00:198:18::/64",
		"--state-dir", filepath.Join(dir, "state"), "--dns-listen", ""}
	fmt.Printf("$ l4lb %s\n", strings.Join(args, " "))
	daemon := agent.Cmd(ctx, abs, args...)
	logPath := filepath.Join(dir, "l4lb.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logFile.Close()
	daemon.Stdout, daemon.Stderr = logFile, logFile
	if err := daemon.Start(); err != nil {
		return err
	}
	defer func() {
		_ = daemon.Process.Signal(syscall.SIGTERM)
		_ = daemon.Wait()
		step("l4lb's log")
		if b, err := os.ReadFile(logPath); err == nil {
			fmt.Print(string(b))
		}
	}()
	if err := waitHealthy(ctx, agent.NS, 15*time.Second); err != nil {
		return err
	}
	if _, err := show(agent.NS, abs, "vips"); err != nil {
		return err
	}

	out, err := agent.Run(abs, "vips", "--json")
	if err != nil {
		return err
	}
	var vips []struct {
		IP   string `json:"ip"`
		Port int    `json:"port"`
	}
	if err := json.Unmarshal([]byte(out), &vips); err != nil || len(vips) == 0 {
		return fmt.Errorf("l4lb vips --json: %v %q", err, out)
	}
	curl := []string{"-sS", "--max-time", "2", "--resolve", fmt.Sprintf("%s:6666:%s", vipName, vips[0].IP), "http://" + vipName + ":6666/"}
	step("curl to the VIP by name, as the DC/OS documentation checks a VIP")
	for range 6 {
		if _, err := show(agent.NS, "curl", curl...); err != nil {
			return err
		}
	}

	step("Task myservice.3 is killed: Marathon reports TASK_KILLED, l4lb follows within a second")
	killed := strings.Replace(string(apps), `"id": "myservice.3", "state": "TASK_RUNNING"`, `"id": "myservice.3", "state": "TASK_KILLED"`, 1)
	if killed == string(apps) {
		return fmt.Errorf("%s has no running task myservice.3 to kill", appsFile)
	}
	if err := os.WriteFile(appsPath, []byte(killed), 0o644); err != nil {
		return err
	}
	time.Sleep(time.Second)
	for range 6 {
		if _, err := show(agent.NS, "curl", curl...); err != nil {
			return err
		}
	}

	step("What an operator audits: nft list table inet l4lb")
	if _, err := show(agent.NS, "nft", "list", "table", "inet", "l4lb"); err != nil {
		return err
	}
	return nil
}

func waitHealthy(ctx context.Context, ns *netns.NS, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if err := ctx.Err(); err != nil {
			return err
		}
		if out, err := ns.Run("curl", "-sf", "--max-time", "1", "http://127.0.0.1:62080/healthz"); err == nil {
			fmt.Print(out)
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("l4lb not healthy within %v", timeout)
}
