package vip

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
)

// Default VIP pools, as in DC/OS.
var (
	DefaultPool4 = netip.MustParsePrefix("11.0.0.0/8")
	DefaultPool6 = netip.MustParsePrefix("fd01:c::/64")
)

// Allocations maps the names of named VIPs to their addresses, per family.
type Allocations struct {
	V4 map[string]netip.Addr `json:"ipv4"`
	V6 map[string]netip.Addr `json:"ipv6"`
}

// Equal reports whether two allocations hold the same assignments.
func (a Allocations) Equal(b Allocations) bool {
	return maps.Equal(a.V4, b.V4) && maps.Equal(a.V6, b.V6)
}

// pool is a prefix seen as a range of offsets from its first address.
type pool struct {
	prefix netip.Prefix
	size   uint64 // number of addresses, capped at 2^63
}

func newPool(p netip.Prefix) pool {
	p = p.Masked()
	host := p.Addr().BitLen() - p.Bits()
	if host > 63 {
		host = 63
	}
	return pool{prefix: p, size: 1 << host}
}

// usable reports whether an offset may be handed out: never the network
// address, nor the IPv4 broadcast address, when the pool is larger than two.
func (p pool) usable(off uint64) bool {
	if p.size <= 2 {
		return true
	}
	if off == 0 {
		return false
	}
	return !(p.prefix.Addr().Is4() && off == p.size-1)
}

// capacity is the number of usable addresses.
func (p pool) capacity() uint64 {
	switch {
	case p.size <= 2:
		return p.size
	case p.prefix.Addr().Is4():
		return p.size - 2
	}
	return p.size - 1
}

// owns reports whether a is a usable address of the pool.
func (p pool) owns(a netip.Addr) bool {
	if !p.prefix.Contains(a) {
		return false
	}
	return p.usable(p.offset(a))
}

// offset is the distance of a from the pool's first address; a must be in
// the pool.
func (p pool) offset(a netip.Addr) uint64 {
	if a.Is4() {
		x, y := a.As4(), p.prefix.Addr().As4()
		return uint64(binary.BigEndian.Uint32(x[:]) - binary.BigEndian.Uint32(y[:]))
	}
	x, y := a.As16(), p.prefix.Addr().As16()
	return binary.BigEndian.Uint64(x[8:]) - binary.BigEndian.Uint64(y[8:])
}

func (p pool) addr(off uint64) netip.Addr {
	if p.prefix.Addr().Is4() {
		b := p.prefix.Addr().As4()
		binary.BigEndian.PutUint32(b[:], binary.BigEndian.Uint32(b[:])+uint32(off))
		return netip.AddrFrom4(b)
	}
	b := p.prefix.Addr().As16()
	lo := binary.BigEndian.Uint64(b[8:]) + off // the pool's host part fits in the low 64 bits
	binary.BigEndian.PutUint64(b[8:], lo)
	return netip.AddrFrom16(b)
}

// hashOffset is where the probe for a name starts.
func (p pool) hashOffset(name string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	return h.Sum64() & (p.size - 1)
}

// errPoolExhausted is returned for names that found no free address.
var errPoolExhausted = errors.New("pool exhausted")

// allocate gives every name an address of the pool. Earlier assignments in
// prev are kept when the address is still in the pool, even when it is
// reserved now: an address never moves while its VIP exists, and the caller
// refuses the IP VIP that asks for it. New names are placed in sorted
// order, each at the hash of its name, probing linearly past addresses that
// are taken, reserved or unusable; so the same set of new names gets the same
// addresses whatever order the input had. Names that find no address are
// returned with an error.
func allocate(p pool, names []string, prev map[string]netip.Addr, reserved map[netip.Addr]bool) (map[string]netip.Addr, map[string]error) {
	out := make(map[string]netip.Addr, len(names))
	taken := make(map[netip.Addr]bool, len(names))
	var fresh []string
	for _, name := range names {
		a, ok := prev[name]
		if ok && p.owns(a) && !taken[a] {
			out[name] = a
			taken[a] = true
			continue
		}
		fresh = append(fresh, name)
	}
	slices.Sort(fresh)
	var errs map[string]error
	used := uint64(len(taken))
	for a := range reserved {
		if p.owns(a) && !taken[a] {
			used++
		}
	}
	free := p.capacity() - min(used, p.capacity())
	for _, name := range fresh {
		if free == 0 {
			if errs == nil {
				errs = map[string]error{}
			}
			errs[name] = fmt.Errorf("%w: no free address in %s for %s", errPoolExhausted, p.prefix, name)
			continue
		}
		start := p.hashOffset(name)
		for i := uint64(0); i < p.size; i++ {
			off := (start + i) & (p.size - 1)
			if !p.usable(off) {
				continue
			}
			a := p.addr(off)
			if taken[a] || reserved[a] {
				continue
			}
			out[name] = a
			taken[a] = true
			free--
			break
		}
	}
	return out, errs
}

// allocFile is the name of the allocation file in the state directory.
const allocFile = "allocations.json"

// LoadAllocations reads the allocations persisted in dir. A missing file is
// not an error: it gives empty allocations.
func LoadAllocations(dir string) (Allocations, error) {
	var a Allocations
	data, err := os.ReadFile(filepath.Join(dir, allocFile))
	if errors.Is(err, fs.ErrNotExist) {
		return Allocations{}, nil
	}
	if err != nil {
		return Allocations{}, fmt.Errorf("read allocations: %w", err)
	}
	if err := json.Unmarshal(data, &a); err != nil {
		return Allocations{}, fmt.Errorf("decode allocations %s: %w", filepath.Join(dir, allocFile), err)
	}
	return a, nil
}

// SaveAllocations writes the allocations to dir atomically (write to a
// temporary file, sync, rename), creating dir if needed.
func SaveAllocations(dir string, a Allocations) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	if a.V4 == nil {
		a.V4 = map[string]netip.Addr{}
	}
	if a.V6 == nil {
		a.V6 = map[string]netip.Addr{}
	}
	data, err := json.MarshalIndent(a, "", "  ")
	if err != nil {
		return fmt.Errorf("encode allocations: %w", err)
	}
	tmp, err := os.CreateTemp(dir, allocFile+".*")
	if err != nil {
		return fmt.Errorf("save allocations: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("save allocations: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("save allocations: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("save allocations: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, allocFile)); err != nil {
		return fmt.Errorf("save allocations: %w", err)
	}
	return nil
}
