package forward

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// Fake is an Interface over an in-memory filter table per family (one
// backend, like iptables-nft), for the sync loop's tests. It runs the same
// decisions as the Kernel against a model of iptables, so a test can set
// the FORWARD policy the way Docker would and see what l4lb adds.
type Fake struct {
	mu       sync.Mutex
	backends []*backend
	mem      [2]*memTables
	syncs    int
	// Err, when set, is returned by the next Sync or Cleanup (and cleared).
	Err error
}

var _ Interface = (*Fake)(nil)

// NewFake returns a fake whose FORWARD chains accept (no Docker yet).
func NewFake() *Fake {
	f := &Fake{}
	for i, v6 := range []bool{false, true} {
		f.mem[i] = newMemTables()
		f.backends = append(f.backends, &backend{name: backendName(v6, false), v6: v6, t: f.mem[i]})
	}
	return f
}

// Sync implements Interface.
func (f *Fake) Sync(ctx context.Context, want Want) (Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.syncs++
	if err := f.Err; err != nil {
		f.Err = nil
		return Result{}, err
	}
	return syncAll(ctx, f.backends, want)
}

// Cleanup implements Interface.
func (f *Fake) Cleanup(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.Err; err != nil {
		f.Err = nil
		return err
	}
	return cleanupAll(ctx, f.backends)
}

// SetPolicy sets the policy of the family's FORWARD chain ("ACCEPT" or
// "DROP"), as `iptables -P FORWARD DROP` does.
func (f *Fake) SetPolicy(v6 bool, policy string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mem[idx(v6)].policy[chainForward] = policy
}

// AppendRule appends a rule to a chain of the family's filter table, as
// another tool would.
func (f *Fake) AppendRule(v6 bool, chain string, spec ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mem[idx(v6)].Append(tableFilter, chain, spec...)
}

// Dump returns the family's filter table as `iptables -S` prints it.
func (f *Fake) Dump(v6 bool) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mem[idx(v6)].dump()
}

// Syncs counts the calls to Sync.
func (f *Fake) Syncs() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.syncs
}

func idx(v6 bool) int {
	if v6 {
		return 1
	}
	return 0
}

// memTables models one filter table closely enough for Sync: built-in
// chains with policies, user chains, rules as specifications, and the
// errors iptables gives for missing or busy chains and rules.
type memTables struct {
	policy map[string]string
	chains map[string][][]string
	user   []string // user chains in creation order
	calls  int      // commands run
	writes int      // commands that changed something
}

var (
	builtins = []string{"INPUT", "FORWARD", "OUTPUT"}
	verdicts = []string{"ACCEPT", "DROP", "REJECT", "RETURN", "LOG"}
)

func newMemTables() *memTables {
	m := &memTables{policy: map[string]string{}, chains: map[string][][]string{}}
	for _, c := range builtins {
		m.policy[c] = "ACCEPT"
		m.chains[c] = nil
	}
	return m
}

func (m *memTables) check(table, chain string) error {
	m.calls++
	if table != tableFilter {
		return fmt.Errorf("fake: table %q not modelled", table)
	}
	if _, ok := m.chains[chain]; !ok {
		return fmt.Errorf("fake: chain %s does not exist", chain)
	}
	return nil
}

func (m *memTables) List(table, chain string) ([]string, error) {
	if err := m.check(table, chain); err != nil {
		return nil, err
	}
	return m.lines(chain), nil
}

func (m *memTables) lines(chain string) []string {
	var out []string
	if p, ok := m.policy[chain]; ok {
		out = append(out, "-P "+chain+" "+p)
	} else {
		out = append(out, "-N "+chain)
	}
	for _, spec := range m.chains[chain] {
		out = append(out, specLine(chain, spec))
	}
	return out
}

func (m *memTables) dump() string {
	var out []string
	for _, c := range builtins {
		out = append(out, "-P "+c+" "+m.policy[c])
	}
	for _, c := range m.user {
		out = append(out, "-N "+c)
	}
	for _, c := range append(slices.Clone(builtins), m.user...) {
		for _, spec := range m.chains[c] {
			out = append(out, specLine(c, spec))
		}
	}
	return strings.Join(out, "\n") + "\n"
}

func (m *memTables) ChainExists(table, chain string) (bool, error) {
	m.calls++
	_, ok := m.chains[chain]
	return ok && table == tableFilter, nil
}

func (m *memTables) ClearChain(table, chain string) error {
	m.calls++
	m.writes++
	if _, ok := m.chains[chain]; !ok {
		m.user = append(m.user, chain)
	}
	m.chains[chain] = nil
	return nil
}

func (m *memTables) target(spec []string) error {
	for i := 0; i+1 < len(spec); i++ {
		if spec[i] == "-j" || spec[i] == "-g" {
			t := spec[i+1]
			if _, ok := m.chains[t]; !ok && !slices.Contains(verdicts, t) {
				return fmt.Errorf("fake: no chain/target %s", t)
			}
		}
	}
	return nil
}

func (m *memTables) Append(table, chain string, spec ...string) error {
	if err := m.check(table, chain); err != nil {
		return err
	}
	if err := m.target(spec); err != nil {
		return err
	}
	m.writes++
	m.chains[chain] = append(m.chains[chain], slices.Clone(spec))
	return nil
}

func (m *memTables) Insert(table, chain string, pos int, spec ...string) error {
	if err := m.check(table, chain); err != nil {
		return err
	}
	if err := m.target(spec); err != nil {
		return err
	}
	if pos < 1 || pos > len(m.chains[chain])+1 {
		return fmt.Errorf("fake: index of insertion too big: %s", strconv.Itoa(pos))
	}
	m.writes++
	m.chains[chain] = slices.Insert(m.chains[chain], pos-1, slices.Clone(spec))
	return nil
}

func (m *memTables) Delete(table, chain string, spec ...string) error {
	if err := m.check(table, chain); err != nil {
		return err
	}
	for i, have := range m.chains[chain] {
		if slices.Equal(have, spec) {
			m.writes++
			m.chains[chain] = slices.Delete(m.chains[chain], i, i+1)
			return nil
		}
	}
	return fmt.Errorf("fake: bad rule (does a matching rule exist in that chain?)")
}

func (m *memTables) DeleteChain(table, chain string) error {
	if err := m.check(table, chain); err != nil {
		return err
	}
	if _, builtin := m.policy[chain]; builtin {
		return fmt.Errorf("fake: cannot delete built-in chain %s", chain)
	}
	if len(m.chains[chain]) > 0 {
		return fmt.Errorf("fake: chain %s is not empty", chain)
	}
	for _, rules := range m.chains {
		for _, spec := range rules {
			for i := 0; i+1 < len(spec); i++ {
				if (spec[i] == "-j" || spec[i] == "-g") && spec[i+1] == chain {
					return fmt.Errorf("fake: chain %s is referenced", chain)
				}
			}
		}
	}
	m.writes++
	delete(m.chains, chain)
	m.user = slices.DeleteFunc(m.user, func(c string) bool { return c == chain })
	return nil
}
