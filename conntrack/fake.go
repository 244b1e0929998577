package conntrack

import (
	"context"
	"net/netip"
	"slices"
	"sync"
)

// Fake is an in-memory conntrack table for the tests of code that holds an
// Interface (the sync loop). It behaves like Kernel: it lists DNATed flows
// and deletes by reply tuple and zone, an entry already gone being no
// error. It is safe for concurrent use.
type Fake struct {
	mu        sync.Mutex
	table     []Flow
	deleted   []Flow
	full      int
	narrowed  int
	flowsErr  error
	deleteErr error
	asked     []Suspect
}

var (
	_ Interface  = (*Fake)(nil)
	_ PortLister = (*Fake)(nil)
)

// NewFake returns a table holding flows.
func NewFake(flows ...Flow) *Fake { return &Fake{table: slices.Clone(flows)} }

// Add puts flows into the table, as traffic would.
func (f *Fake) Add(flows ...Flow) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.table = append(f.table, flows...)
}

// Table returns the flows in the table.
func (f *Fake) Table() []Flow {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.table)
}

// Deleted returns every flow deleted so far, in order.
func (f *Fake) Deleted() []Flow {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.deleted)
}

// Lists returns how many times the table was listed in full (Flows) and
// narrowed to some backends (FlowsFrom).
func (f *Fake) Lists() (full, narrowed int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.full, f.narrowed
}

// FailNext makes the next listing (Flows or FlowsFrom) fail with listErr and
// the next Delete fail with deleteErr, deleting nothing; nil leaves that
// operation alone.
func (f *Fake) FailNext(listErr, deleteErr error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.flowsErr, f.deleteErr = listErr, deleteErr
}

// Flows implements Interface.
func (f *Fake) Flows(ctx context.Context) ([]Flow, error) {
	return f.list(ctx, nil)
}

// FlowsFrom implements Interface.
func (f *Fake) FlowsFrom(ctx context.Context, addrs []netip.Addr) ([]Flow, error) {
	return f.list(ctx, addrs)
}

// FlowsOf implements PortLister. It counts as a narrowed listing; Asked
// says what it was asked for last.
func (f *Fake) FlowsOf(ctx context.Context, backends []Suspect) ([]Flow, error) {
	addrs := make([]netip.Addr, 0, len(backends))
	for _, b := range backends {
		addrs = append(addrs, b.Backend.Addr())
	}
	flows, err := f.list(ctx, addrs)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked = slices.Clone(backends)
	return slices.DeleteFunc(flows, func(fl Flow) bool {
		return !slices.Contains(backends, Suspect{Proto: fl.Proto, Backend: fl.ReplySrc})
	}), err
}

// Asked returns the backends the last FlowsOf asked for.
func (f *Fake) Asked() []Suspect {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.asked)
}

func (f *Fake) list(ctx context.Context, addrs []netip.Addr) ([]Flow, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if addrs == nil {
		f.full++
	} else {
		f.narrowed++
	}
	if err := f.flowsErr; err != nil {
		f.flowsErr = nil
		return nil, err
	}
	var out []Flow
	for _, fl := range f.table {
		if fl.DNATed() && (addrs == nil || slices.Contains(addrs, fl.ReplySrc.Addr())) {
			out = append(out, fl)
		}
	}
	return out, nil
}

// Delete implements Interface.
func (f *Fake) Delete(ctx context.Context, flows []Flow) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.deleteErr; err != nil {
		f.deleteErr = nil
		return 0, &DeleteError{Failed: len(flows), Err: err}
	}
	n := 0
	for _, d := range flows {
		i := slices.IndexFunc(f.table, func(e Flow) bool {
			return e.Proto == d.Proto && e.ReplySrc == d.ReplySrc && e.ReplyDst == d.ReplyDst && e.Zone == d.Zone
		})
		if i < 0 {
			continue
		}
		f.deleted = append(f.deleted, f.table[i])
		f.table = slices.Delete(f.table, i, i+1)
		n++
	}
	return n, nil
}
