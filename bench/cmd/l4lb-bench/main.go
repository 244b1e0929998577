// Command l4lb-bench measures l4lb's data path and control plane against
// direct traffic and kube-proxy's iptables and nftables layouts, inside
// network namespaces it creates and removes. See README.md, "Benchmarks".
//
//	l4lb-bench [run] --mode quick|full [flags]   the benchmark
//	l4lb-bench serve --listen ADDR:PORT=X,...    (internal) backend server, run in a backend namespace
//	l4lb-bench connect --targets ADDR:PORT,...   (internal) connection client, run in the client namespace
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/l4lb/l4lb/bench/load"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	err := runMain(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
	default:
		fmt.Fprintln(os.Stderr, "l4lb-bench:", err)
		os.Exit(1)
	}
}

func runMain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cmd := "run"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "run":
		return cmdRun(ctx, args, stdout, stderr)
	case "serve":
		return cmdServe(ctx, args, stdout, stderr)
	case "connect":
		return cmdConnect(ctx, args, stdout, stderr)
	}
	return fmt.Errorf("unknown command %q: want run, serve or connect", cmd)
}

// cmdServe runs the backend server until it is signalled. It prints
// "ready" once it listens.
func cmdServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "", "ADDR:PORT=X,... : listen there, answer each connection with the byte X")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ls, err := load.ParseListeners(*listen)
	if err != nil {
		return err
	}
	ready := make(chan struct{})
	errc := make(chan error, 1)
	go func() { errc <- load.Serve(ctx, ls, func() { close(ready) }) }()
	select {
	case <-ready:
		fmt.Fprintln(stdout, "ready")
	case err := <-errc:
		return err
	}
	return <-errc
}

// cmdConnect runs one client run and prints its result as JSON. With
// --hold it prints "held" on stderr once the held connections are open.
func cmdConnect(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("connect", flag.ContinueOnError)
	fs.SetOutput(stderr)
	targets := fs.String("targets", "", "ADDR:PORT,... : targets, cycled through by each worker")
	workers := fs.Int("workers", 4, "concurrent workers")
	duration := fs.Duration("duration", time.Second, "how long to open new connections")
	timeout := fs.Duration("timeout", time.Second, "per connection: connect and first byte")
	hold := fs.Int("hold", 0, "connections to open first and hold until the end")
	holdAfter := fs.Duration("hold-after", 0, "keep held connections open this long after the run, or until signalled")
	until := fs.String("until-mark", "", "stop at the first connection answered with this byte")
	more := fs.String("more-targets", "", "SET;SET;... (each ADDR:PORT,...): further target sets; alternate --targets and these in slices")
	rounds := fs.Int("rounds", 3, "with --more-targets: rounds of slices")
	slice := fs.Duration("slice", 500*time.Millisecond, "with --more-targets: length of one slice")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg := load.ClientConfig{Workers: *workers, Duration: *duration, Timeout: *timeout, Hold: *hold, HoldAfter: *holdAfter}
	var err error
	if cfg.Targets, err = parseTargets(*targets); err != nil {
		return err
	}
	if *more != "" {
		sets := [][]netip.AddrPort{cfg.Targets}
		for _, set := range strings.Split(*more, ";") {
			ts, err := parseTargets(set)
			if err != nil {
				return err
			}
			sets = append(sets, ts)
		}
		res, err := load.RunRounds(ctx, load.RoundsConfig{Sets: sets, Workers: *workers, Timeout: *timeout, Rounds: *rounds, Slice: *slice})
		if err != nil {
			return err
		}
		return json.NewEncoder(stdout).Encode(res)
	}
	if len(*until) > 1 {
		return fmt.Errorf("--until-mark %q: want one character", *until)
	}
	if *until != "" {
		cfg.UntilMark = (*until)[0]
	}
	if cfg.Hold > 0 {
		cfg.OnHeld = func() { fmt.Fprintln(stderr, "held") }
	}
	res, err := load.RunClient(ctx, cfg)
	if err != nil {
		return err
	}
	return json.NewEncoder(stdout).Encode(res)
}

func parseTargets(s string) ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	for _, t := range strings.Split(s, ",") {
		ap, err := netip.ParseAddrPort(strings.TrimSpace(t))
		if err != nil {
			return nil, fmt.Errorf("target %q: %w", t, err)
		}
		out = append(out, ap)
	}
	return out, nil
}
