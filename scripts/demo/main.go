// Command demo runs l4lb on the DC/OS documentation's example app in
// network namespaces it creates and removes: an agent, three backends
// serving HTTP, l4lb programming the agent's nftables, and curl reaching
// myservice.marathon.l4lb.thisdcos.directory:6666 by name; and a Mesos
// master with the Kafka service, whose brokers get
// broker.kafka.l4lb.thisdcos.directory:9092 through the operator API. Nothing
// in the root namespace changes. Run it with `make demo` (root).
package main

import (
	"context"
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
	"github.com/l4lb/l4lb/mesos"
	mt "github.com/l4lb/l4lb/mesos/mesostest"
)

const (
	vipName   = "myservice.marathon.l4lb.thisdcos.directory"
	kafkaName = "broker.kafka.l4lb.thisdcos.directory"
)

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

	// Two Kafka brokers run on the first two backends (host network, port
	// 9092), launched by a framework named kafka; the Mesos master (a fake
	// that speaks the operator API) runs in the agent namespace.
	var tasks []mesos.Task
	var agents []mesos.Agent
	for i, b := range topo.Backends[:2] {
		ap := netip.AddrPortFrom(b.Addr4, 9092)
		msg := fmt.Sprintf("hello from kafka-%d-broker on %s\n", i, ap)
		var ln net.Listener
		if err := b.Do(func() (err error) { ln, err = net.Listen("tcp", ap.String()); return err }); err != nil {
			return err
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, msg) }),
			ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(ln)
		defer srv.Close()
		agentID := fmt.Sprintf("agent-%d", i+1)
		agents = append(agents, mt.Agent(agentID, b.Addr4.String()))
		tk := mt.Task("kafka-framework-0002", fmt.Sprintf("kafka-%d-broker__%d", i, i+1), agentID, "TASK_RUNNING",
			mt.Port(9092, "tcp", "VIP_6e0f8a42-93d1-4d0b-8a5c-2f7b1e9c3d40", "broker:9092", "network-scope", "host"))
		tk.Name = fmt.Sprintf("kafka-%d-broker", i)
		tasks = append(tasks, tk)
	}
	var mln net.Listener
	if err := agent.Do(func() (err error) { mln, err = net.Listen("tcp", "127.0.0.1:5050"); return err }); err != nil {
		return err
	}
	master := mt.Start(mln)
	defer master.Close()
	master.SetHeartbeat(5 * time.Second)
	master.SetState(mt.State(tasks, []mesos.Framework{mt.Framework("kafka-framework-0002", "kafka")}, agents))

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

	// Processes in the agent namespace resolve through l4lb's DNS
	// (`ip netns exec` bind-mounts /etc/netns/NAME/resolv.conf).
	etc := filepath.Join("/etc/netns", agent.Name)
	if err := os.MkdirAll(etc, 0o755); err != nil {
		return err
	}
	defer os.RemoveAll(etc)
	if err := os.WriteFile(filepath.Join(etc, "resolv.conf"), []byte("nameserver 127.0.0.1\n"), 0o644); err != nil {
		return err
	}

	step("Starting l4lb in the agent namespace")
	args := []string{"run", "--source", "file:" + appsPath, "--source", "mesos:http://127.0.0.1:5050", "--vip-pool", "198.18.0.0/16", "--vip-pool6", "fd00:198:18::/64",
		"--state-dir", filepath.Join(dir, "state"), "--dns-listen", "127.0.0.1:53"}
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

	step("The name resolves through l4lb's DNS")
	if _, err := show(agent.NS, "dig", "+noall", "+answer", vipName); err != nil {
		return err
	}
	curl := []string{"-sS", "--max-time", "2", "http://" + vipName + ":6666/"}
	step("curl by name, as the DC/OS documentation checks a VIP")
	for range 6 {
		if _, err := show(agent.NS, "curl", curl...); err != nil {
			return err
		}
	}

	step("The Kafka service's VIP, from the Mesos master's operator API (framework kafka, label VIP_<uuid>: broker:9092)")
	if _, err := show(agent.NS, "dig", "+noall", "+answer", kafkaName); err != nil {
		return err
	}
	for range 4 {
		if _, err := show(agent.NS, "curl", "-sS", "--max-time", "2", "http://"+kafkaName+":9092/"); err != nil {
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
