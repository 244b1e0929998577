package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/l4lb/l4lb/conntrack"
	"github.com/l4lb/l4lb/explain"
	"github.com/l4lb/l4lb/nat"
	"github.com/l4lb/l4lb/sync/api"
)

// exitStatus ends the command with a status of its own; err, when set, is
// printed first.
type exitStatus struct {
	code int
	err  error
}

func (e *exitStatus) Error() string {
	if e.err != nil {
		return e.err.Error()
	}
	return fmt.Sprintf("exit status %d", e.code)
}

func (e *exitStatus) Unwrap() error { return e.err }

// explainFailed is the exit status when explain could not answer (a usage
// error, the daemon's API or the kernel could not be read): 0, 1 and 2
// are answers.
const explainFailed = 3

func cmdExplain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	err := explainMain(ctx, args, stdout, stderr)
	if errors.Is(err, errUsage) {
		// 2 is an answer (unknown target) here.
		return &exitStatus{code: explainFailed, err: err}
	}
	return err
}

func explainMain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("explain")
	addr := fs.String("api", "127.0.0.1:62080", "address of the daemon's HTTP API")
	proto := fs.String("proto", "", "tcp or udp (default: every protocol of the VIP)")
	asJSON := fs.Bool("json", false, "print the answer as JSON")
	trace := fs.Bool("trace", false, "send one probe and print the path the kernel reports for it")
	table := fs.String("table", nat.DefaultTable, "name of l4lb's nftables table (family inet)")
	probeTimeout := fs.Duration("probe-timeout", 2*time.Second, "how long the --trace probe waits for a connection (TCP) or an answer (UDP)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, `Usage: l4lb explain NAME:PORT | IP:PORT [--proto tcp|udp] [--json] [--trace] [--api ADDR] [--table NAME] [--probe-timeout D]

Where traffic to a VIP goes, and why, from the running daemon and the kernel
of this agent. Exit status: 0 served, 1 refused, 2 unknown to l4lb, 3 no
answer (a usage error, or the daemon or the kernel could not be read).

Flags:`)
		fs.PrintDefaults()
	}
	// The target may come before, between or after the flags.
	fs.SetOutput(stderr)
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return err
			}
			return fmt.Errorf("%w: %v", errUsage, err)
		}
		if fs.NArg() == 0 {
			break
		}
		positional = append(positional, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(positional) > 1 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, positional[1])
	}
	var target string
	if len(positional) == 1 {
		target = positional[0]
	}
	if err := parseFlags(fs, nil, stderr); err != nil { // the environment
		return err
	}
	if target == "" {
		fs.Usage()
		return fmt.Errorf("%w: explain needs a target NAME:PORT or IP:PORT", errUsage)
	}
	t, err := explain.ParseTarget(target, *proto)
	if err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}

	failed := func(err error) error { return &exitStatus{code: explainFailed, err: err} }
	vips, err := fetchVIPs(ctx, *addr)
	if err != nil {
		return failed(err)
	}
	k, err := nat.New(*table, nat.WithoutRoutes())
	if err != nil {
		return failed(fmt.Errorf("open nftables (explain needs CAP_NET_ADMIN in the agent's namespace): %w", err))
	}
	defer k.Close()
	snap, err := k.Snapshot()
	if err != nil {
		return failed(fmt.Errorf("read table %s: %w", *table, err))
	}
	_, matched := explain.Match(t, vips)
	addrs := explain.BackendAddrs(matched)
	for key, slots := range snap.Slots {
		if t.Addr.IsValid() && key.Addr != t.Addr {
			continue
		}
		for _, s := range slots {
			if s.IsValid() && !slices.Contains(addrs, s.Addr()) {
				addrs = append(addrs, s.Addr())
			}
		}
	}
	var flows []conntrack.Flow
	if len(addrs) > 0 {
		ct, err := conntrack.New()
		if err != nil {
			return failed(fmt.Errorf("open conntrack: %w", err))
		}
		flows, err = ct.FlowsFrom(ctx, addrs)
		ct.Close()
		if err != nil {
			return failed(fmt.Errorf("list conntrack entries of the backends: %w", err))
		}
	}
	in := explain.Inputs{Target: t, VIPs: vips, Kernel: snap, Flows: flows}
	if len(matched) == 0 && t.Addr.IsValid() {
		// Why an address is no VIP: its label may have been refused. The
		// answer stands without it.
		if err := getJSON(ctx, "http://"+*addr+"/v1/problems", &in.Problems); err != nil {
			fmt.Fprintf(stderr, "l4lb: note: %v\n", err)
		}
	}
	rep := explain.Decide(in)

	if *trace {
		if !snap.Exists {
			return failed(fmt.Errorf("--trace: table inet %s is not in this namespace's kernel", *table))
		}
		for name := range snap.Chains {
			if strings.HasPrefix(name, nat.TraceChainPrefix) {
				fmt.Fprintf(stderr, "l4lb: note: probe chain %s is in table %s: another explain is tracing, or one was killed (the daemon's next full resync removes it)\n", name, *table)
			}
		}
		for i := range rep.Entries {
			e := &rep.Entries[i]
			if e.Verdict == explain.Unknown {
				continue
			}
			tr, err := explain.Probe(ctx, k, *table, e.Key(), *probeTimeout)
			if err != nil {
				return failed(fmt.Errorf("--trace %s/%s: %w", e.VIP, e.Protocol, err))
			}
			tr.Annotate(snap, *table, netip.AddrPortFrom(e.Key().Addr, e.Port))
			e.Trace = tr
		}
	}

	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else if err := rep.Write(stdout); err != nil {
		return err
	}
	if code := rep.Verdict.ExitCode(); code != 0 {
		return &exitStatus{code: code}
	}
	return nil
}

// fetchVIPs reads GET /v1/vips; filtering is done here, so any daemon
// version answers.
func fetchVIPs(ctx context.Context, addr string) ([]api.VIP, error) {
	var vips []api.VIP
	if err := getJSON(ctx, "http://"+addr+"/v1/vips", &vips); err != nil {
		return nil, err
	}
	return vips, nil
}

// getJSON reads a JSON answer of the daemon's API into out.
func getJSON(ctx context.Context, url string, out any) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("get %s: %w (is l4lb run listening there?)", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("get %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 256<<20)).Decode(out); err != nil {
		return fmt.Errorf("decode %s: %w", url, err)
	}
	return nil
}
