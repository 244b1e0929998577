package nat

import (
	"context"
	"sync"
)

// Fake is an Interface that keeps the table in memory, for the sync loop's
// tests. It plans changes with the same code as the Kernel, so its Results
// count what a real Apply would change.
type Fake struct {
	mu      sync.Mutex
	obs     *observed
	current *Ruleset
	gen     uint64 // generation of current, for deltas
	applies int
	// Err, when set, is returned by the next Apply (and cleared).
	Err error
}

// NewFake returns an empty fake table.
func NewFake() *Fake { return &Fake{obs: newObserved()} }

// Apply implements Interface.
func (f *Fake) Apply(ctx context.Context, r *Ruleset, full bool) (Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applies++
	if err := f.Err; err != nil {
		f.Err = nil
		return Result{}, err
	}
	var p *plan
	if !full && r.delta != nil && r.delta.base == f.gen && f.gen != 0 {
		p = makeDeltaPlan(f.obs, r)
	} else {
		p = makePlan(f.obs, r)
	}
	f.gen = r.gen
	res := Result{ReadBack: full, Rebuilt: p.rebuild, Elements: p.elements()}
	res.Chains, res.Dropped = p.chainChanges()
	if p.elements() > 0 || res.Chains > 0 || p.rebuild {
		res.Batches = 1
	}
	f.obs = f.obs.apply(p, r)
	f.current = r
	return res, nil
}

// Cleanup implements Interface.
func (f *Fake) Cleanup(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.obs, f.current, f.gen = newObserved(), nil, 0
	return nil
}

// Current returns the ruleset last applied, nil before the first Apply or
// after Cleanup.
func (f *Fake) Current() *Ruleset {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.current
}

// Applies counts the calls to Apply.
func (f *Fake) Applies() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.applies
}

// Dump returns the table's nft text, empty when there is none.
func (f *Fake) Dump() string {
	if r := f.Current(); r != nil {
		return r.Text()
	}
	return ""
}
