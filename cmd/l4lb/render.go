package main

import (
	"context"
	"fmt"
	"io"

	"github.com/l4lb/l4lb/nat"
	"github.com/l4lb/l4lb/sync/source"
	"github.com/l4lb/l4lb/vip"
)

func cmdRender(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("render")
	var m modelFlags
	m.register(fs)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: l4lb render --source SPEC [flags]\n\nPrints the nftables ruleset that run would apply, as an nft script;\nproblems go to stderr. Needs no privileges and touches no kernel state.\n\nFlags:")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if err := m.check(); err != nil {
		return err
	}
	sources, err := m.parseSources(nil)
	if err != nil {
		return err
	}
	snap, err := source.LoadAll(ctx, sources)
	if err != nil {
		return err
	}
	prev, err := vip.LoadAllocations(m.stateDir)
	if err != nil {
		fmt.Fprintf(stderr, "warning: %v; addresses are computed afresh\n", err)
	}
	state, problems := vip.DesiredWith(snap.Apps, snap.Decls, vip.Config{
		Pool4: m.pool4, Pool6: m.pool6, Domain: m.zone, Previous: prev, Resolver: m.resolver,
		// No kernel here: the agent's own networks are not checked.
		Guard: m.guard(),
	})
	for _, p := range append(snap.Problems, problems...) {
		fmt.Fprintf(stderr, "problem: %v\n", p)
	}
	return nat.Compile(state, m.table).WriteText(stdout)
}
