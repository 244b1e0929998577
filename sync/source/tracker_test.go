package source

import (
	"errors"
	"slices"
	"testing"
)

// A list replaces what came before it, later deltas win by key, and
// ApplyTo deletes the held keys a list lacks.
func TestTrackerTakeApply(t *testing.T) {
	pokes := 0
	var staleErrs []error
	tr := NewTracker(func() { pokes++ }, func(err error) { staleErrs = append(staleErrs, err) })
	if tk := tr.Take(); tk.Listed || tk.HasList || len(tk.Deltas) != 0 {
		t.Fatalf("empty tracker took %+v", tk)
	}
	tr.Update([]Group{{Key: "/early"}}, nil) // before the list: dropped by it
	tr.Replace([]Group{{Key: "/a"}, {Key: "/b"}})
	tr.Update([]Group{{Key: "/c"}}, []Key{"/b"})
	tr.Update(nil, []Key{"/c"})
	tr.Stale(errors.New("down"))

	store := map[Key]bool{}
	held := map[Key]bool{"/old": true}
	store["/old"] = true
	tk := tr.Take()
	if !tk.Listed || !tk.HasList || tk.Err == nil || tk.Errs != 1 || pokes != 5 || len(staleErrs) != 1 {
		t.Fatalf("took %+v after %d pokes, %v", tk, pokes, staleErrs)
	}
	tk.ApplyTo(held, func(g *Group) { store[g.Key] = true }, func(k Key) { delete(store, k) })
	if got := sortedKeys(store); !slices.Equal(got, []Key{"/a"}) {
		t.Errorf("store %v, want [/a]", got)
	}
	if got := sortedKeys(held); !slices.Equal(got, []Key{"/a"}) {
		t.Errorf("held %v, want [/a]", got)
	}

	// Taken once: the next Take has only what came since.
	tr.Stale(nil)
	tk = tr.Take()
	if !tk.Listed || tk.HasList || len(tk.Deltas) != 0 || tk.Err != nil || tk.Errs != 0 {
		t.Errorf("second take %+v", tk)
	}
}

func sortedKeys(m map[Key]bool) []Key {
	var ks []Key
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}
