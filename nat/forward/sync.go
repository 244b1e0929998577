package forward

import (
	"context"
	"errors"
	"fmt"
	"slices"
)

// tables is the part of go-iptables that Sync uses, for one binary (one
// family of one backend); *iptables.IPTables implements it, and so does the
// in-memory model of the fake.
type tables interface {
	List(table, chain string) ([]string, error)
	ChainExists(table, chain string) (bool, error)
	ClearChain(table, chain string) error
	Append(table, chain string, rulespec ...string) error
	Insert(table, chain string, pos int, rulespec ...string) error
	Delete(table, chain string, rulespec ...string) error
	DeleteChain(table, chain string) error
}

// backend is the filter table of one family in one iptables backend.
type backend struct {
	name string // "iptables-nft", "ip6tables-legacy", ...
	v6   bool
	t    tables // nil while its binary is not found
	// present reports whether the filter table exists, for backends where
	// reading it through the binary would create it (legacy); nil when
	// reading is harmless.
	present func() (bool, error)
	// absent is set once l4lb's chain is known not to exist (and nothing
	// jumps to it), so that a Sync that wants nothing reads FORWARD only.
	absent bool
}

// base is the name of the family's iptables binary.
func base(v6 bool) string {
	if v6 {
		return "ip6tables"
	}
	return "iptables"
}

// backendName names a backend after its binary: iptables-nft,
// ip6tables-legacy, ...
func backendName(v6, legacy bool) string {
	if legacy {
		return base(v6) + "-legacy"
	}
	return base(v6) + "-nft"
}

// syncAll runs Sync over the backends; a failing backend does not stop the
// others.
func syncAll(ctx context.Context, bs []*backend, w Want) (Result, error) {
	var res Result
	var errs []error
	for _, b := range bs {
		if err := ctx.Err(); err != nil {
			return res, errors.Join(append(errs, err)...)
		}
		inUse := true
		if b.present != nil {
			var err error
			if inUse, err = b.present(); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", b.name, err))
				continue
			}
		}
		if !inUse {
			b.absent = true // no table, no chain of l4lb's
			continue
		}
		if b.t == nil {
			if b.present != nil {
				res.Unchecked = append(res.Unchecked, b.name)
			}
			continue
		}
		n, active, err := b.sync(w.rules(b.v6))
		res.Changes += n
		if active {
			res.Active = append(res.Active, b.name)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", b.name, err))
		}
	}
	return res, errors.Join(errs...)
}

// cleanupAll removes l4lb's chain and jump from every backend.
func cleanupAll(ctx context.Context, bs []*backend) error {
	var errs []error
	for _, b := range bs {
		if err := ctx.Err(); err != nil {
			return errors.Join(append(errs, err)...)
		}
		if b.present != nil {
			inUse, err := b.present()
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", b.name, err))
				continue
			}
			if !inUse {
				continue
			}
		}
		if b.t == nil {
			continue
		}
		fw, err := b.forward()
		if err == nil {
			b.absent = false
			_, err = b.remove(fw)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", b.name, err))
		}
	}
	return errors.Join(errs...)
}

func (b *backend) forward() (chainDump, error) {
	lines, err := b.t.List(tableFilter, chainForward)
	if err != nil {
		return chainDump{}, fmt.Errorf("list %s: %w", chainForward, err)
	}
	return parseList(chainForward, lines)
}

// sync brings one backend in line: l4lb's chain and jump when FORWARD
// blocks and there is something to let through, nothing otherwise. It
// returns the number of changing commands and whether the rules are in
// place.
func (b *backend) sync(want []rule) (changes int, active bool, err error) {
	fw, err := b.forward()
	if err != nil {
		return 0, false, err
	}
	if len(want) == 0 || !blocks(fw) {
		n, err := b.remove(fw)
		return n, false, err
	}
	n, err := b.install(fw, want)
	return n, err == nil, err
}

// install fills l4lb's chain and jumps to it from the top of FORWARD. The
// chain is filled before the jump exists, so a half-done install never
// sends packets to an incomplete chain. A jump that is already there stays
// where it is: whoever moved rules above it did so on purpose.
func (b *backend) install(fw chainDump, want []rule) (int, error) {
	b.absent = false
	n := 0
	canonical := 0
	for _, spec := range fw.rules {
		if slices.Equal(spec, jumpSpec()) {
			canonical++
		}
	}
	var have [][]string
	if canonical > 0 {
		lines, err := b.t.List(tableFilter, Chain)
		if err != nil {
			return n, fmt.Errorf("list %s: %w", Chain, err)
		}
		d, err := parseList(Chain, lines)
		if err != nil {
			return n, err
		}
		have = d.rules
	} else {
		// Without l4lb's jump the chain is absent or left over from an
		// interrupted run: create it or empty it.
		if err := b.t.ClearChain(tableFilter, Chain); err != nil {
			return n, fmt.Errorf("create %s: %w", Chain, err)
		}
		n++
	}
	del, add := diffRules(have, want)
	for _, spec := range del {
		if err := b.t.Delete(tableFilter, Chain, spec...); err != nil {
			return n, fmt.Errorf("delete %q: %w", specLine(Chain, spec), err)
		}
		n++
	}
	for _, r := range add {
		if err := b.t.Append(tableFilter, Chain, r.spec()...); err != nil {
			return n, fmt.Errorf("append %q: %w", specLine(Chain, r.spec()), err)
		}
		n++
	}
	if canonical == 0 {
		if err := b.t.Insert(tableFilter, chainForward, 1, jumpSpec()...); err != nil {
			return n, fmt.Errorf("insert jump to %s: %w", Chain, err)
		}
		n++
	}
	// Duplicates (two l4lb processes racing) go; iptables deletes the first
	// of identical rules, so the last one stays.
	for ; canonical > 1; canonical-- {
		if err := b.t.Delete(tableFilter, chainForward, jumpSpec()...); err != nil {
			return n, fmt.Errorf("delete duplicate jump to %s: %w", Chain, err)
		}
		n++
	}
	return n, nil
}

// remove deletes every rule of FORWARD that jumps to l4lb's chain, then the
// chain.
func (b *backend) remove(fw chainDump) (int, error) {
	n := 0
	jumps := false
	for _, spec := range fw.rules {
		if !jumpsToChain(spec) {
			continue
		}
		jumps = true
		if err := b.t.Delete(tableFilter, chainForward, spec...); err != nil {
			return n, fmt.Errorf("delete %q: %w", specLine(chainForward, spec), err)
		}
		n++
	}
	if b.absent && !jumps {
		return n, nil
	}
	exists, err := b.t.ChainExists(tableFilter, Chain)
	if err != nil {
		return n, fmt.Errorf("look for %s: %w", Chain, err)
	}
	if exists {
		if err := b.t.ClearChain(tableFilter, Chain); err != nil {
			return n, fmt.Errorf("flush %s: %w", Chain, err)
		}
		if err := b.t.DeleteChain(tableFilter, Chain); err != nil {
			return n, fmt.Errorf("delete %s: %w", Chain, err)
		}
		n += 2
	}
	b.absent = true
	return n, nil
}
