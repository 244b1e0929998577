package source

import "sync"

// Tracker is a Sink that only records what its source delivered, until the
// sync loop takes it (kube-proxy's change trackers): a list replaces
// everything recorded before it, deltas are kept by key, the last one
// winning. Each delivery calls poke, which triggers the loop. The agent's
// sync loop and the controller both use it.
type Tracker struct {
	poke    func()
	onStale func(err error) // optional: every Stale, before poke

	mu      sync.Mutex
	listed  bool           // a list arrived, ever
	replace []Group        // a list not taken yet
	hasList bool           // replace is set (it may be empty)
	deltas  map[Key]*Group // changes after it; nil value: gone
	err     error          // the source's last error; nil when it reads
	errs    int            // errors reported since it last read
}

// NewTracker returns a Tracker that calls poke after every delivery and
// onStale (when not nil) with every Stale.
func NewTracker(poke func(), onStale func(err error)) *Tracker {
	return &Tracker{poke: poke, onStale: onStale, deltas: map[Key]*Group{}}
}

// Replace records a full list.
func (t *Tracker) Replace(groups []Group) {
	t.mu.Lock()
	t.replace, t.hasList, t.listed = groups, true, true
	clear(t.deltas)
	t.mu.Unlock()
	t.poke()
}

// Update records deltas.
func (t *Tracker) Update(changed []Group, gone []Key) {
	t.mu.Lock()
	for i := range changed {
		g := changed[i]
		t.deltas[g.Key] = &g
	}
	for _, k := range gone {
		t.deltas[k] = nil
	}
	t.mu.Unlock()
	t.poke()
}

// Stale records that the source cannot read (err) or reads again (nil).
func (t *Tracker) Stale(err error) {
	t.mu.Lock()
	t.err = err
	if err != nil {
		t.errs++
	} else {
		t.errs = 0
	}
	t.mu.Unlock()
	if t.onStale != nil {
		t.onStale(err)
	}
	t.poke()
}

// Taken is what a Tracker recorded since the last Take.
type Taken struct {
	Listed  bool           // the source delivered a list, ever
	List    []Group        // a new full list, when HasList
	HasList bool           //
	Deltas  map[Key]*Group // deltas after it; nil value: gone
	Err     error          // the source's last error; nil when it reads
	Errs    int            // errors reported since it last read
}

// Take returns what was recorded and forgets it.
func (t *Tracker) Take() Taken {
	t.mu.Lock()
	defer t.mu.Unlock()
	tk := Taken{Listed: t.listed, List: t.replace, HasList: t.hasList, Deltas: t.deltas, Err: t.err, Errs: t.errs}
	t.replace, t.hasList, t.deltas = nil, false, map[Key]*Group{}
	return tk
}

// ApplyTo plays what was taken onto a keyed store whose keys of this
// source are held: a list sets its groups and deletes the held keys it
// lacks, then each delta sets or deletes its key. held is kept up to date.
func (tk Taken) ApplyTo(held map[Key]bool, set func(g *Group), del func(k Key)) {
	if tk.HasList {
		seen := make(map[Key]bool, len(tk.List))
		for j := range tk.List {
			g := &tk.List[j]
			seen[g.Key] = true
			set(g)
			held[g.Key] = true
		}
		for k := range held {
			if !seen[k] {
				del(k)
				delete(held, k)
			}
		}
	}
	for k, g := range tk.Deltas {
		if g == nil {
			del(k)
			delete(held, k)
			continue
		}
		set(g)
		held[k] = true
	}
}
