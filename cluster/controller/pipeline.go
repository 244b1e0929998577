package controller

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/l4lb/l4lb/cluster"
	"github.com/l4lb/l4lb/sync/source"
	"github.com/l4lb/l4lb/vip"
)

// pipeline is the controller's half of the agent's sync loop
// (sync/reconcile): a sink per source records lists and deltas, and take
// moves them into a vip.Index, which recomputes only the VIPs they reach.
// In place of the kernel, the Writer puts the result in etcd.
type pipeline struct {
	index *vip.Index
	sinks []*source.Tracker
	held  []map[source.Key]bool
	poke  func() // set before the sources run
}

func newPipeline(model vip.Config, n int) *pipeline {
	p := &pipeline{index: vip.NewIndex(model)}
	for range n {
		p.sinks = append(p.sinks, source.NewTracker(func() { p.poke() }, nil))
		p.held = append(p.held, map[source.Key]bool{})
	}
	return p
}

// take moves what the sinks recorded into the index. It reports whether
// every source has listed, and the errors of the sources that cannot read.
func (p *pipeline) take(sources []source.Source) (bool, error) {
	ready := true
	var errs []error
	for i, s := range p.sinks {
		tk := s.Take()
		ready = ready && tk.Listed
		if tk.Err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", sources[i], tk.Err))
		}
		tk.ApplyTo(p.held[i],
			func(g *source.Group) { p.index.Set(indexKey(i, g.Key), g.Decls, g.Problems, g.Hosts...) },
			func(k source.Key) { p.index.Delete(indexKey(i, k)) })
	}
	return ready, errors.Join(errs...)
}

func indexKey(i int, k source.Key) string { return strconv.Itoa(i) + " " + string(k) }

// changeOps are the writes of one change: the VIPs it reached, and the
// allocations when names came or went. Keys that etcd already holds as
// they are cost nothing.
func (w *Writer) changeOps(conf cluster.Config, state vip.State, ch vip.Change) []Op {
	l := w.layout
	var ops []Op
	after := make(map[string]bool, len(ch.After))
	for _, v := range ch.After {
		k := l.VIPKey(v.Key())
		after[k] = true
		if val := string(cluster.EncodeVIP(v)); w.known[k] != val {
			ops = append(ops, Op{Key: k, Value: val})
		}
	}
	for _, v := range ch.Before {
		if k := l.VIPKey(v.Key()); !after[k] {
			if _, ok := w.known[k]; ok {
				ops = append(ops, Op{Key: k, Delete: true})
			}
		}
	}
	if ch.Allocations {
		desired := map[string]string{}
		for name, a := range cluster.Allocs(state.Allocations) {
			desired[l.Alloc(name)] = string(cluster.EncodeAlloc(a))
		}
		held := map[string]string{}
		for k, v := range w.known {
			if _, err := l.ParseAllocKey(k); err == nil {
				held[k] = v
			}
		}
		ops = append(ops, Plan(held, desired)...)
	}
	if c := string(cluster.EncodeConfig(conf)); w.known[l.Config()] != c {
		ops = append(ops, Op{Key: l.Config(), Value: c})
	}
	sortOps(ops)
	return ops
}
