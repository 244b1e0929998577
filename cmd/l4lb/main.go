// Command l4lb gives every agent of a cluster name-based virtual IPs and
// east-west layer-4 load balancing on nftables. See README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

const usage = `l4lb: name-based VIPs and layer-4 load balancing on nftables

Usage:
  l4lb run --source SPEC [--source SPEC ...] [flags]   the agent daemon
  l4lb render --source SPEC [flags]                    print the ruleset run would apply
  l4lb vips [--api ADDR] [--json]                      VIPs, backends and states of a running daemon
  l4lb explain NAME:PORT|IP:PORT [--proto P] [--trace] where traffic to a VIP goes, and why
  l4lb cleanup [--table NAME]                          remove the table, routes and iptables rules
  l4lb controller --source SPEC --etcd URL[,URL]       cluster mode: the elected writer of VIPs to etcd

Sources: file:PATH (Marathon apps, or a Mesos GET_STATE or SUBSCRIBED), marathon:URL, mesos:URL;
agents in cluster mode: etcd:URL[,URL].
Every flag also reads the environment variable L4LB_<FLAG> (dashes as underscores).
Run "l4lb COMMAND -h" for the flags of a command.
`

// errUsage marks errors in how the command was called (exit status 2).
var errUsage = errors.New("usage")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := runMain(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	var status *exitStatus
	switch {
	case err == nil:
	case errors.As(err, &status):
		if status.err != nil {
			fmt.Fprintln(os.Stderr, "l4lb:", status.err)
		}
		os.Exit(status.code)
	case errors.Is(err, flag.ErrHelp):
	case errors.Is(err, errUsage):
		fmt.Fprintln(os.Stderr, "l4lb:", err)
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "l4lb:", err)
		os.Exit(1)
	}
}

func runMain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("%w: no command", errUsage)
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "render":
		return cmdRender(ctx, rest, stdout, stderr)
	case "run":
		return cmdRun(ctx, rest, stdout, stderr)
	case "vips":
		return cmdVIPs(ctx, rest, stdout, stderr)
	case "cleanup":
		return cmdCleanup(ctx, rest, stdout, stderr)
	case "explain":
		return cmdExplain(ctx, rest, stdout, stderr)
	case "controller":
		return cmdController(ctx, rest, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("%w: unknown command %q", errUsage, cmd)
}
