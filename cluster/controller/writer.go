package controller

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/l4lb/l4lb/cluster"
)

// Transaction limits (DESIGN section 10): at most this many operations and
// bytes of keys and values in one transaction, well inside etcd's defaults
// (--max-txn-ops 128, --max-request-bytes 1.5 MiB).
const (
	MaxTxnOps   = 128
	MaxTxnBytes = 1 << 20
)

// ErrNotLeader is returned when a write's guard failed: the election key
// of this controller is gone or was created again, so it no longer leads.
var ErrNotLeader = errors.New("not the leader any more: the write was refused")

// Op is one change of a key: a put of Value, or a delete.
type Op struct {
	Key    string
	Value  string
	Delete bool
}

func (o Op) size() int { return len(o.Key) + len(o.Value) + 16 }

// Plan returns the operations that turn known into desired: puts of keys
// that are new or differ, deletes of keys that went, in key order (the
// config before the VIPs). Keys equal in both cost nothing.
func Plan(known, desired map[string]string) []Op {
	var ops []Op
	for k, v := range desired {
		if old, ok := known[k]; !ok || old != v {
			ops = append(ops, Op{Key: k, Value: v})
		}
	}
	for k := range known {
		if _, ok := desired[k]; !ok {
			ops = append(ops, Op{Key: k, Delete: true})
		}
	}
	sortOps(ops)
	return ops
}

// sortOps orders operations by key: the config before the VIPs, and a
// stable order for tests and logs.
func sortOps(ops []Op) { slices.SortFunc(ops, func(a, b Op) int { return cmp.Compare(a.Key, b.Key) }) }

// Batches cuts ops into transactions of at most maxOps operations and
// maxBytes of keys and values, in order. An operation larger than maxBytes
// alone is a transaction of its own.
func Batches(ops []Op, maxOps, maxBytes int) [][]Op {
	var out [][]Op
	start, size := 0, 0
	for i, op := range ops {
		if i > start && (i-start >= maxOps || size+op.size() > maxBytes) {
			out = append(out, ops[start:i])
			start, size = i, 0
		}
		size += op.size()
	}
	if start < len(ops) {
		out = append(out, ops[start:])
	}
	return out
}

// Writer writes the keys of the layout, each transaction guarded by the
// leadership of its controller: it commits only while the election key
// exists with the revision it was created at. It remembers what etcd holds
// (read once by Load, then kept by its own writes) so that a write sends
// only the keys that changed. A Writer is not safe for concurrent use.
type Writer struct {
	kv       clientv3.KV
	layout   cluster.Layout
	guardKey string
	guardRev int64
	metrics  *Metrics
	known    map[string]string
}

// NewWriter returns a writer guarded by the election key guardKey created at
// guardRev (concurrency.Election's Key and Rev).
func NewWriter(kv clientv3.KV, layout cluster.Layout, guardKey string, guardRev int64, m *Metrics) *Writer {
	if m == nil {
		m = NewMetrics(nil)
	}
	return &Writer{kv: kv, layout: layout, guardKey: guardKey, guardRev: guardRev, metrics: m}
}

// Load reads what etcd holds under the layout (config, allocations, VIPs),
// as one snapshot, and returns it. Keys the controller does not own are
// ignored.
func (w *Writer) Load(ctx context.Context) (map[string]string, error) {
	kvs, _, err := cluster.List(ctx, w.kv, w.layout.Prefix()+"/v1/", 0)
	if err != nil {
		return nil, err
	}
	known := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		if k := string(kv.Key); w.layout.Managed(k) {
			known[k] = string(kv.Value)
		}
	}
	w.known = known
	return maps.Clone(known), nil
}

// Stats counts what a write did.
type Stats struct {
	Puts, Deletes, Txns int
}

// Write makes etcd hold desired under the layout: it sends the keys that
// differ from what etcd holds in guarded transactions of bounded size. It stops at the first
// transaction that fails; the transactions before it are committed (and
// remembered), so the next Write sends only the rest. ErrNotLeader means
// the guard failed: this controller must stop leading.
func (w *Writer) Write(ctx context.Context, desired map[string]string) (Stats, error) {
	if w.known == nil {
		if _, err := w.Load(ctx); err != nil {
			return Stats{}, err
		}
	}
	return w.Apply(ctx, Plan(w.known, desired))
}

// Apply sends ops in guarded transactions of bounded size, as Write does.
// The writer must have loaded what etcd holds (Load or Write) first.
func (w *Writer) Apply(ctx context.Context, ops []Op) (Stats, error) {
	var st Stats
	if w.known == nil {
		return st, errors.New("write to etcd: what etcd holds was not read yet")
	}
	for _, batch := range Batches(ops, MaxTxnOps, MaxTxnBytes) {
		ops := make([]clientv3.Op, len(batch))
		for i, op := range batch {
			if op.Delete {
				ops[i] = clientv3.OpDelete(op.Key)
			} else {
				ops[i] = clientv3.OpPut(op.Key, op.Value)
			}
		}
		start := time.Now()
		resp, err := w.kv.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(w.guardKey), "=", w.guardRev)).Then(ops...).Commit()
		w.metrics.txnDuration.Observe(time.Since(start).Seconds())
		if err != nil {
			w.metrics.txns.WithLabelValues("error").Inc()
			return st, fmt.Errorf("write %d keys to etcd: %w", len(batch), err)
		}
		if !resp.Succeeded {
			w.metrics.txns.WithLabelValues("not_leader").Inc()
			return st, ErrNotLeader
		}
		w.metrics.txns.WithLabelValues("ok").Inc()
		st.Txns++
		for _, op := range batch {
			if op.Delete {
				delete(w.known, op.Key)
				st.Deletes++
				w.metrics.writes.WithLabelValues("delete").Inc()
			} else {
				w.known[op.Key] = op.Value
				st.Puts++
				w.metrics.writes.WithLabelValues("put").Inc()
			}
		}
	}
	w.metrics.keys.Set(float64(len(w.known)))
	return st, nil
}
