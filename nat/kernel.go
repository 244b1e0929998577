package nat

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/l4lb/l4lb/vip"
)

// This is the only file of the package that speaks netlink to nftables.
//
// google/nftables builds the messages: a Conn whose test dial records the
// batch instead of sending it serves as the encoder. l4lb sends the batches
// itself, for three reasons: sets need the typeof userdata that nft writes
// (so that `nft list ruleset` prints and re-reads the backend maps), large
// loads must be cut into bounded batches on sockets with large buffers, and
// an error must say which message (which set, which elements) failed.

// Interface is what the sync loop holds: make the kernel hold a ruleset.
type Interface interface {
	// Apply changes the kernel so that it holds r, touching only what
	// differs. With full set, or when the last Apply failed, it first reads
	// the table back and repairs whatever differs (drift).
	Apply(ctx context.Context, r *Ruleset, full bool) (Result, error)
	// Cleanup removes the table and the routes l4lb added.
	Cleanup(ctx context.Context) error
}

// Result says what an Apply did.
type Result struct {
	ReadBack bool // the table was read back from the kernel first
	Rebuilt  bool // the table was (re)created
	Batches  int  // netlink batches sent
	Elements int  // set elements added or deleted
	Chains   int  // chains created, refilled, changed (rules of chain lb) or deleted
	Dropped  int  // of those, deletions of what earlier changes left unused (chain lb's rules of counts no longer used, chains l4lb does not know): not drift
	Routes   int  // routes added or deleted
}

// Drift reports whether a read-back apply found the kernel differing from
// what l4lb had programmed (beyond unused chains it left for later).
func (r Result) Drift() bool {
	return r.ReadBack && (r.Rebuilt || r.Elements > 0 || r.Routes > 0 || r.Chains > r.Dropped)
}

// Changed reports whether the kernel was changed.
func (r Result) Changed() bool { return r.Batches > 0 || r.Routes > 0 }

// Kernel programs l4lb's table over netlink.
type Kernel struct {
	table          string
	netnsFd        int
	maxBatchBytes  int
	routesDisabled bool

	mu     sync.Mutex
	obs    *observed // what the kernel holds; nil when unknown
	gen    uint64    // generation of the ruleset obs holds; 0 when unknown
	tr     *transport
	reader *nftables.Conn
	routes *routes
}

// Option configures a Kernel.
type Option func(*Kernel)

// WithNetNS makes the Kernel program the network namespace behind fd
// instead of the current one (tests and benchmarks).
func WithNetNS(fd int) Option { return func(k *Kernel) { k.netnsFd = fd } }

// WithMaxBatchBytes bounds the size of one netlink batch (default 4 MiB).
// Large loads are cut into several batches; one VIP's changes are never
// split.
func WithMaxBatchBytes(n int) Option { return func(k *Kernel) { k.maxBatchBytes = n } }

// WithoutRoutes leaves routes alone (for benchmarks of the ruleset alone).
func WithoutRoutes() Option { return func(k *Kernel) { k.routesDisabled = true } }

const (
	defaultMaxBatchBytes = 4 << 20
	maxMessageBytes      = 48 << 10 // one message's element list; netlink attributes stop at 64 KiB
	socketBuffer         = 32 << 20
)

// New returns a Kernel for the table (family inet).
func New(table string, opts ...Option) (*Kernel, error) {
	if table == "" {
		table = DefaultTable
	}
	k := &Kernel{table: table, maxBatchBytes: defaultMaxBatchBytes}
	for _, o := range opts {
		o(k)
	}
	var err error
	if k.tr, err = dialTransport(k.netnsFd); err != nil {
		return nil, err
	}
	k.reader, err = nftables.New(nftables.WithNetNSFd(k.netnsFd), nftables.AsLasting(),
		nftables.WithSockOptions(func(c *netlink.Conn) error {
			if err := forceBuffers(c, 0, socketBuffer); err != nil {
				return err
			}
			return primeDumps(c)
		}))
	if err != nil {
		k.tr.close()
		return nil, fmt.Errorf("open nftables reader: %w", err)
	}
	if !k.routesDisabled {
		if k.routes, err = newRoutes(k.netnsFd); err != nil {
			k.Close()
			return nil, err
		}
	}
	return k, nil
}

// Close releases the netlink sockets. The rules stay in the kernel.
func (k *Kernel) Close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	var errs []error
	if k.tr != nil {
		errs = append(errs, k.tr.close())
	}
	if k.reader != nil {
		errs = append(errs, k.reader.CloseLasting())
	}
	if k.routes != nil {
		k.routes.close()
	}
	return errors.Join(errs...)
}

// Apply implements Interface.
func (k *Kernel) Apply(ctx context.Context, r *Ruleset, full bool) (Result, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	var res Result
	obs := k.obs
	if full || obs == nil {
		var err error
		if obs, err = k.observe(r); err != nil {
			k.obs = nil
			return res, fmt.Errorf("read table %s back: %w", k.table, err)
		}
		res.ReadBack = true
	}
	prevGen := k.gen
	var p *plan
	if !res.ReadBack && r.delta != nil && r.delta.base == k.gen && k.gen != 0 {
		p = makeDeltaPlan(obs, r)
	} else {
		p = makePlan(obs, r)
	}
	if !p.empty() {
		res.Rebuilt = p.rebuild
		res.Elements = p.elements()
		res.Chains, res.Dropped = p.chainChanges()
		batches, err := k.encode(p, r)
		if err != nil {
			k.obs = nil
			return res, err
		}
		for _, b := range batches {
			if err := ctx.Err(); err != nil {
				k.obs = nil
				return res, fmt.Errorf("program table %s: %w", k.table, err)
			}
			if err := k.tr.send(ctx, b); err != nil {
				// What the kernel holds is now unknown: read it back next time.
				k.obs = nil
				return res, fmt.Errorf("program table %s: %w", k.table, err)
			}
			res.Batches++
		}
	}
	k.obs = obs.apply(p, r)
	k.gen = r.gen
	// A delta that moves no IP VIP leaves the routes as they are; every
	// other apply (and every resync) checks them.
	deltaNoRoutes := !res.ReadBack && r.delta != nil && r.delta.base == prevGen && prevGen != 0 &&
		len(r.delta.ipvipsAdd)+len(r.delta.ipvipsDel) == 0
	if k.routes != nil && !deltaNoRoutes {
		n, err := k.routes.sync(wantedRoutes(r))
		res.Routes = n
		if err != nil {
			return res, err
		}
	}
	return res, nil
}

// Cleanup implements Interface.
func (k *Kernel) Cleanup(ctx context.Context) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.obs = nil
	enc, err := newEncoder()
	if err != nil {
		return err
	}
	t := &nftables.Table{Name: k.table, Family: nftables.TableFamilyINet}
	// Adding first makes the delete succeed whether or not the table exists.
	enc.c.AddTable(t)
	enc.c.DelTable(t)
	b, err := enc.take([]string{"add table " + k.table, "delete table " + k.table})
	if err != nil {
		return err
	}
	var errs []error
	if err := k.tr.send(ctx, b); err != nil {
		errs = append(errs, fmt.Errorf("delete table %s: %w", k.table, err))
	}
	if k.routes != nil {
		if _, err := k.routes.sync(nil); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ---- encoding ----

// encoder records the messages google/nftables would send.
type encoder struct {
	c    *nftables.Conn
	msgs []netlink.Message
}

var ackMsg = netlink.Message{Header: netlink.Header{Type: netlink.Error}, Data: make([]byte, 4)}

func newEncoder() (*encoder, error) {
	e := &encoder{}
	c, err := nftables.New(nftables.WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
		e.msgs = append(e.msgs, req...)
		return []netlink.Message{ackMsg}, nil
	}))
	if err != nil {
		return nil, fmt.Errorf("nftables encoder: %w", err)
	}
	e.c = c
	return e, nil
}

// batch is one netlink transaction: begin, messages, end. desc describes
// each message between begin and end, for errors.
type batch struct {
	msgs []netlink.Message
	desc []string
}

// take returns the recorded batch, with the set userdata nft would write.
func (e *encoder) take(desc []string) (batch, error) {
	e.msgs = nil
	if err := e.c.Flush(); err != nil {
		return batch{}, fmt.Errorf("encode batch: %w", err)
	}
	msgs := e.msgs
	e.msgs = nil
	if len(msgs) != len(desc)+2 {
		return batch{}, fmt.Errorf("encode batch: %d messages for %d operations", len(msgs)-2, len(desc))
	}
	for i := range msgs {
		if msgs[i].Header.Type == newSetType {
			if err := patchSetUserdata(&msgs[i]); err != nil {
				return batch{}, err
			}
		}
	}
	return batch{msgs: msgs, desc: desc}, nil
}

var (
	newSetType    = netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWSET)
	setDeclByName = func() map[string]setDecl {
		m := map[string]setDecl{}
		for _, d := range (&Ruleset{}).setDecls() {
			m[d.name] = d
		}
		return m
	}()
)

// patchSetUserdata replaces the userdata of a NEWSET message with nft's.
func patchSetUserdata(m *netlink.Message) error {
	attrs, err := netlink.UnmarshalAttributes(m.Data[4:])
	if err != nil {
		return fmt.Errorf("decode set message: %w", err)
	}
	var name string
	for _, a := range attrs {
		if a.Type == unix.NFTA_SET_NAME {
			name = string(bytes.TrimRight(a.Data, "\x00"))
		}
	}
	d, ok := setDeclByName[name]
	if !ok {
		return fmt.Errorf("encode set %q: not one of l4lb's sets", name)
	}
	out := attrs[:0]
	for _, a := range attrs {
		if a.Type != unix.NFTA_SET_USERDATA {
			out = append(out, a)
		}
	}
	out = append(out, netlink.Attribute{Type: unix.NFTA_SET_USERDATA, Data: setUserdata(d)})
	data, err := netlink.MarshalAttributes(out)
	if err != nil {
		return fmt.Errorf("encode set %s: %w", name, err)
	}
	m.Data = append(m.Data[:4:4], data...)
	return nil
}

// nftSet returns the google/nftables description of one of l4lb's sets.
func (k *Kernel) nftSet(d setDecl, id uint32) *nftables.Set {
	t := &nftables.Table{Name: k.table, Family: nftables.TableFamilyINet}
	addr := nftables.TypeIPAddr
	if d.v6 {
		addr = nftables.TypeIP6Addr
	}
	s := &nftables.Set{Table: t, Name: d.name, ID: id}
	switch d.kind {
	case kindVIPs:
		s.KeyType = nftables.MustConcatSetType(addr, nftables.TypeInetProto, nftables.TypeInetService)
	case kindBackends:
		s.IsMap = true
		s.KeyType = nftables.MustConcatSetType(addr, nftables.TypeInetProto, nftables.TypeInetService, nftables.TypeInteger)
		s.DataType = nftables.MustConcatSetType(addr, nftables.TypeInetService)
	case kindAddrs:
		s.KeyType = addr
	case kindPairs:
		s.KeyType = nftables.MustConcatSetType(addr, addr)
	}
	return s
}

// setIDs gives each set a fixed batch id, so that rules created in the same
// batch find it (and no global counter is shared between Kernels).
func setIDs(r *Ruleset) map[string]uint32 {
	ids := map[string]uint32{}
	for i, d := range r.setDecls() {
		ids[d.name] = uint32(i + 1)
	}
	return ids
}

// batchBuilder packs operations into batches of bounded size.
type batchBuilder struct {
	k       *Kernel
	ids     map[string]uint32
	enc     *encoder
	desc    []string
	bytes   int
	batches []batch
	// pending element changes of the current batch, per set
	del, add map[string][]nftables.SetElement
	order    []string // sets in the order their changes are emitted
}

func (b *batchBuilder) table() *nftables.Table {
	return &nftables.Table{Name: b.k.table, Family: nftables.TableFamilyINet}
}

func (b *batchBuilder) set(name string) *nftables.Set {
	return b.k.nftSet(setDeclByName[name], b.ids[name])
}

func (b *batchBuilder) op(desc string, size int) {
	b.desc = append(b.desc, desc)
	b.bytes += size
}

func (b *batchBuilder) elem(del bool, set string, e nftables.SetElement) {
	m := b.add
	if del {
		m = b.del
	}
	m[set] = append(m[set], e)
	b.bytes += elemSize(e)
}

func elemSize(e nftables.SetElement) int {
	n := 24 + len(e.Key) + len(e.Val) + len(e.Comment)
	if e.VerdictData != nil {
		n += 24 + len(e.VerdictData.Chain)
	}
	return n
}

// flushElems emits the pending element changes: deletions of VIP elements
// first, then backend deletions, backend additions, VIP additions (so a VIP
// is never matched before its slots are filled), in messages of bounded
// size.
func (b *batchBuilder) flushElems() error {
	emit := func(del bool, set string) error {
		m := b.add
		verb := "add"
		if del {
			m, verb = b.del, "delete"
		}
		elems := m[set]
		for len(elems) > 0 {
			n, size := 0, 0
			for n < len(elems) && (n == 0 || size+elemSize(elems[n]) <= maxMessageBytes) {
				size += elemSize(elems[n])
				n++
			}
			chunk := elems[:n]
			elems = elems[n:]
			var err error
			if del {
				err = b.enc.c.SetDeleteElements(b.set(set), chunk)
			} else {
				err = b.enc.c.SetAddElements(b.set(set), chunk)
			}
			if err != nil {
				return fmt.Errorf("encode %s of %d elements of %s: %w", verb, len(chunk), set, err)
			}
			b.desc = append(b.desc, fmt.Sprintf("%s %d elements of %s (first %s)", verb, len(chunk), set, describeElem(set, chunk[0])))
		}
		m[set] = nil
		return nil
	}
	for _, set := range []string{setVIPs4, setVIPs6} {
		if err := emit(true, set); err != nil {
			return err
		}
	}
	for _, set := range []string{mapBackends4, mapBackends6, setIPVIPs4, setIPVIPs6, setHairpin4, setHairpin6} {
		if err := emit(true, set); err != nil {
			return err
		}
	}
	for _, set := range []string{setHairpin4, setHairpin6, setIPVIPs4, setIPVIPs6, mapBackends4, mapBackends6, setVIPs4, setVIPs6} {
		if err := emit(false, set); err != nil {
			return err
		}
	}
	return nil
}

// cut ends the current batch.
func (b *batchBuilder) cut() error {
	if err := b.flushElems(); err != nil {
		return err
	}
	if len(b.desc) == 0 {
		return nil
	}
	bt, err := b.enc.take(b.desc)
	if err != nil {
		return err
	}
	b.batches = append(b.batches, bt)
	b.desc, b.bytes = nil, 0
	return nil
}

// encode turns a plan into batches: structure first (with whatever elements
// fit), then the per-VIP units packed into bounded batches, then removals of
// stray and unused elements, then, in a batch of their own, chain lb
// without the counts no longer used (once no VIP has their slots) and
// chains l4lb does not know.
func (k *Kernel) encode(p *plan, r *Ruleset) ([]batch, error) {
	enc, err := newEncoder()
	if err != nil {
		return nil, err
	}
	b := &batchBuilder{k: k, ids: setIDs(r), enc: enc,
		del: map[string][]nftables.SetElement{}, add: map[string][]nftables.SetElement{}}
	t := b.table()
	if p.rebuild {
		enc.c.AddTable(t)
		enc.c.DelTable(t)
		enc.c.AddTable(t)
		b.op("add table "+k.table, 64)
		b.op("delete table "+k.table, 64)
		b.op("add table "+k.table, 64)
	}
	for _, d := range p.newSets {
		if err := enc.c.AddSet(k.nftSet(d, b.ids[d.name]), nil); err != nil {
			return nil, fmt.Errorf("encode set %s: %w", d.name, err)
		}
		b.op("add set "+d.name, 512)
	}
	chains := map[string]*nftables.Chain{}
	for _, c := range append(append([]chainDecl{}, p.newChains...), p.fixChains...) {
		chains[c.name] = k.nftChain(c)
	}
	// Chains in the order of the text (so that nft lists them the same),
	// all of them before any rule, since rules jump to refuse and lb. One
	// batch is atomic: no packet sees a chain before its rules.
	for _, c := range p.newChains {
		enc.c.AddChain(chains[c.name])
		b.op("add chain "+c.name, 128)
	}
	for _, c := range p.fixChains {
		enc.c.FlushChain(chains[c.name])
		b.op("flush chain "+c.name, 64)
	}
	for _, c := range append(append([]chainDecl{}, p.newChains...), p.fixChains...) {
		for i, rl := range c.rules {
			enc.c.AddRule(&nftables.Rule{Table: t, Chain: chains[c.name], Exprs: k.ruleExprs(rl, b.ids)})
			b.op(fmt.Sprintf("add rule %d of chain %s", i+1, c.name), 256)
		}
	}
	// New counts' rules go before the first rule of a larger count (the
	// IPv6 rules and goto refuse come after every IPv4 rule), in ascending
	// order, so that chain lb stays as the text lists it.
	lbCh := &nftables.Chain{Name: chainLB, Table: t}
	var lb lbHandles
	if len(p.lbAdd)+len(p.lbDel) > 0 {
		if lb, err = k.lbHandles(); err != nil {
			return nil, err
		}
		for _, n := range p.lbDel {
			if lb.v4[n] == 0 || lb.v6[n] == 0 {
				return nil, fmt.Errorf("chain %s has no rule for %d backends to delete", chainLB, n)
			}
		}
	}
	for _, v6 := range []bool{false, true} {
		for _, n := range p.lbAdd {
			rl := dnatRule(v6, n, pick4(v6, mapBackends4, mapBackends6))
			enc.c.InsertRule(&nftables.Rule{Table: t, Chain: lbCh, Position: lb.before(v6, n), Exprs: k.ruleExprs(rl, b.ids)})
			b.op(fmt.Sprintf("insert rule %q into chain %s", rl.text, chainLB), 256)
		}
	}
	for _, a := range p.hairpinAdd {
		b.elem(false, pick(a, setHairpin4, setHairpin6), nftables.SetElement{Key: pairBytes(a)})
	}
	for _, a := range p.ipvipsAdd {
		b.elem(false, pick(a, setIPVIPs4, setIPVIPs6), nftables.SetElement{Key: addrBytes(a)})
	}
	for _, u := range p.units {
		if !u.delVIP && u.addVIP == nil && len(u.delSlots) == 0 && len(u.addSlots) == 0 {
			continue // bookkeeping only: same backends in another order
		}
		if b.bytes > 0 && b.bytes+unitSize(u) > k.maxBatchBytes {
			if err := b.cut(); err != nil {
				return nil, err
			}
		}
		vset, bemap := pick(u.key.Addr, setVIPs4, setVIPs6), pick(u.key.Addr, mapBackends4, mapBackends6)
		if u.delVIP {
			b.elem(true, vset, nftables.SetElement{Key: vipKeyBytes(u.key)})
		}
		for _, s := range u.delSlots {
			b.elem(true, bemap, nftables.SetElement{Key: beKeyBytes(u.key, s)})
		}
		for _, s := range u.addSlots {
			b.elem(false, bemap, nftables.SetElement{Key: beKeyBytes(u.key, s.slot), Val: beValBytes(s.be)})
		}
		if u.addVIP != nil {
			b.elem(false, vset, nftables.SetElement{Key: vipKeyBytes(u.key), Comment: *u.addVIP})
		}
	}
	for _, s := range p.strays {
		b.elem(true, pick(s.vip.Addr, mapBackends4, mapBackends6), nftables.SetElement{Key: beKeyBytes(s.vip, s.slot)})
	}
	for _, a := range p.ipvipsDel {
		b.elem(true, pick(a, setIPVIPs4, setIPVIPs6), nftables.SetElement{Key: addrBytes(a)})
	}
	for _, a := range p.hairpinDel {
		b.elem(true, pick(a, setHairpin4, setHairpin6), nftables.SetElement{Key: pairBytes(a)})
	}
	if err := b.cut(); err != nil {
		return nil, err
	}
	for _, n := range p.lbDel {
		for _, h := range []uint64{lb.v4[n], lb.v6[n]} {
			if err := enc.c.DelRule(&nftables.Rule{Table: t, Chain: lbCh, Handle: h}); err != nil {
				return nil, fmt.Errorf("encode delete of rule %d of chain %s: %w", h, chainLB, err)
			}
			b.op(fmt.Sprintf("delete rule for %d backends (handle %d) of chain %s", n, h, chainLB), 64)
		}
	}
	for _, name := range p.dropChains {
		c := &nftables.Chain{Name: name, Table: t}
		enc.c.FlushChain(c)
		enc.c.DelChain(c)
		b.op("flush chain "+name, 64)
		b.op("delete chain "+name, 64)
	}
	if err := b.cut(); err != nil {
		return nil, err
	}
	return b.batches, nil
}

// lbHandles are the handles of chain lb's rules in the kernel.
type lbHandles struct {
	v4, v6 map[int]uint64 // by count
	refuse uint64         // goto refuse, the last rule
}

// before is the handle of the rule a new rule for n backends goes before:
// the first rule of its family for a larger count, else the first IPv6
// rule (for an IPv4 rule), else goto refuse.
func (h lbHandles) before(v6 bool, n int) uint64 {
	pos, best := h.refuse, 0
	if !v6 {
		for m, hd := range h.v6 {
			if best == 0 || m < best {
				pos, best = hd, m
			}
		}
	}
	fam := h.v4
	if v6 {
		fam = h.v6
	}
	best = 0
	for m, hd := range fam {
		if m > n && (best == 0 || m < best) {
			pos, best = hd, m
		}
	}
	return pos
}

// lbHandles reads the handles of chain lb's rules, which must be l4lb's.
func (k *Kernel) lbHandles() (lbHandles, error) {
	h := lbHandles{v4: map[int]uint64{}, v6: map[int]uint64{}}
	t := &nftables.Table{Name: k.table, Family: nftables.TableFamilyINet}
	rules, err := k.reader.GetRules(t, &nftables.Chain{Name: chainLB, Table: t})
	if err != nil {
		return h, fmt.Errorf("list rules of chain %s: %w", chainLB, err)
	}
	counts, ok := k.lbCounts(rules)
	want := lbChainDecl(counts)
	if !ok || !k.sameRules(rules, want, nil) {
		return h, fmt.Errorf("chain %s holds rules l4lb did not write: read the table back", chainLB)
	}
	for i, n := range counts {
		h.v4[n], h.v6[n] = rules[i].Handle, rules[len(counts)+i].Handle
	}
	h.refuse = rules[len(rules)-1].Handle
	return h, nil
}

func pick4(v6 bool, v4name, v6name string) string {
	if v6 {
		return v6name
	}
	return v4name
}

func unitSize(u unit) int { return 160 + 96*(len(u.delSlots)+len(u.addSlots)) }

func pick(a netip.Addr, v4, v6 string) string {
	if a.Is4() {
		return v4
	}
	return v6
}

func describeElem(set string, e nftables.SetElement) string {
	d := setDeclByName[set]
	switch d.kind {
	case kindVIPs:
		if k, err := decodeVIPKey(e.Key, d.v6); err == nil {
			return k.String()
		}
	case kindBackends:
		if k, slot, err := decodeBEKey(e.Key, d.v6); err == nil {
			return fmt.Sprintf("%s slot %d", k, slot)
		}
	case kindAddrs:
		if a, ok := addrFrom(e.Key); ok {
			return a.String()
		}
	case kindPairs:
		if a, err := decodePair(e.Key); err == nil {
			return a.String()
		}
	}
	return fmt.Sprintf("%x", e.Key)
}

func (k *Kernel) nftChain(c chainDecl) *nftables.Chain {
	ch := &nftables.Chain{Name: c.name, Table: &nftables.Table{Name: k.table, Family: nftables.TableFamilyINet}}
	if c.hook == "" {
		return ch
	}
	ch.Type = nftables.ChainTypeNAT
	switch c.hook {
	case "prerouting":
		ch.Hooknum = nftables.ChainHookPrerouting
	case "output":
		ch.Hooknum = nftables.ChainHookOutput
	case "postrouting":
		ch.Hooknum = nftables.ChainHookPostrouting
	}
	ch.Priority = nftables.ChainPriorityRef(nftables.ChainPriority(c.prio))
	accept := nftables.ChainPolicyAccept
	ch.Policy = &accept
	return ch
}

// Registers as nft allocates them (see `nft --debug=netlink list ruleset`):
// NFT_REG_1 holds the address, the following 32-bit registers the rest of
// a concatenation; after a 16-byte IPv6 address the next field is NFT_REG_2.
const (
	reg1     = unix.NFT_REG_1
	reg2     = unix.NFT_REG_2
	reg32_01 = unix.NFT_REG32_01
	reg32_02 = unix.NFT_REG32_02
	reg32_03 = unix.NFT_REG32_03
	reg32_05 = unix.NFT_REG32_05
	reg32_06 = unix.NFT_REG32_06
)

func nfproto(v6 bool) []expr.Any {
	p := byte(unix.NFPROTO_IPV4)
	if v6 {
		p = unix.NFPROTO_IPV6
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{p}},
	}
}

func loadAddr(v6, src bool, reg uint32) expr.Any {
	off, n := uint32(16), uint32(4)
	if src {
		off = 12
	}
	if v6 {
		off, n = 24, 16
		if src {
			off = 8
		}
	}
	return &expr.Payload{OperationType: expr.PayloadLoad, DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n}
}

// loadKey loads daddr . l4proto . dport and returns the register after the
// last one used.
func loadKey(v6 bool) ([]expr.Any, uint32) {
	protoReg, portReg, next := uint32(reg32_01), uint32(reg32_02), uint32(reg32_03)
	if v6 {
		protoReg, portReg, next = reg2, reg32_05, reg32_06
	}
	return []expr.Any{
		loadAddr(v6, false, reg1),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: protoReg},
		&expr.Payload{OperationType: expr.PayloadLoad, DestRegister: portReg, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
	}, next
}

func gotoRefuse() expr.Any { return &expr.Verdict{Kind: expr.VerdictGoto, Chain: chainRefuse} }

// ruleExprs renders a rule as netlink expressions, the same ones nft
// generates for the rule's text.
func (k *Kernel) ruleExprs(r rule, ids map[string]uint32) []expr.Any {
	var out []expr.Any
	switch r.kind {
	case ruleVIPLookup:
		key, _ := loadKey(r.v6)
		out = append(nfproto(r.v6), key...)
		out = append(out, &expr.Lookup{SourceRegister: reg1, SetName: r.set, SetID: ids[r.set]},
			&expr.Verdict{Kind: expr.VerdictGoto, Chain: chainLB})
	case ruleRefusePrefix:
		out = append(nfproto(r.v6), prefixMatch(r.prefix)...)
		out = append(out, gotoRefuse())
	case ruleRefuseSet:
		out = append(nfproto(r.v6), loadAddr(r.v6, false, reg1),
			&expr.Lookup{SourceRegister: reg1, SetName: r.set, SetID: ids[r.set]}, gotoRefuse())
	case ruleDNAT:
		key, next := loadKey(r.v6)
		fam, protoReg := uint32(unix.NFPROTO_IPV4), uint32(reg32_01)
		if r.v6 {
			fam, protoReg = unix.NFPROTO_IPV6, reg2
		}
		out = append(nfproto(r.v6), key...)
		out = append(out,
			&expr.Numgen{Register: next, Modulus: uint32(r.n), Type: unix.NFT_NG_RANDOM, Offset: uint32(SlotBase(r.n))},
			&expr.Lookup{SourceRegister: reg1, DestRegister: reg1, IsDestRegSet: true, SetName: r.set, SetID: ids[r.set]},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: fam, RegAddrMin: reg1, RegAddrMax: reg1,
				RegProtoMin: protoReg, RegProtoMax: protoReg, Specified: true})
	case ruleGotoRefuse:
		out = []expr.Any{gotoRefuse()}
	case ruleRejectTCP:
		out = []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{unix.IPPROTO_TCP}},
			&expr.Reject{Type: unix.NFT_REJECT_TCP_RST, Code: 0},
		}
	case ruleReject:
		out = []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH}}
	case ruleHairpin:
		daddrReg := uint32(reg32_01)
		if r.v6 {
			daddrReg = reg2
		}
		out = []expr.Any{
			&expr.Ct{Register: reg1, Key: expr.CtKeySTATUS},
			&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(0x20 /* IPS_DST_NAT */), Xor: make([]byte, 4)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: make([]byte, 4)},
			&expr.Meta{Key: expr.MetaKeyOIF, Register: reg1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(1 /* lo */)},
		}
		out = append(out, nfproto(r.v6)...)
		out = append(out, loadAddr(r.v6, true, reg1), loadAddr(r.v6, false, daddrReg),
			&expr.Lookup{SourceRegister: reg1, SetName: r.set, SetID: ids[r.set]},
			&expr.Masq{})
	}
	return out
}

// prefixMatch matches the destination address against a prefix the way nft
// does: load the whole bytes the prefix covers, mask the last partial byte.
func prefixMatch(p netip.Prefix) []expr.Any {
	p = p.Masked()
	off := uint32(16)
	if p.Addr().Is6() {
		off = 24
	}
	n := uint32((p.Bits() + 7) / 8)
	if n == 0 {
		return nil
	}
	want := addrBytes(p.Addr())[:n]
	out := []expr.Any{&expr.Payload{OperationType: expr.PayloadLoad, DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n}}
	if p.Bits()%8 != 0 {
		mask := make([]byte, n)
		for i := range mask {
			bits := p.Bits() - 8*i
			switch {
			case bits >= 8:
				mask[i] = 0xff
			case bits > 0:
				mask[i] = byte(0xff << (8 - bits))
			}
		}
		out = append(out, &expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: n, Mask: mask, Xor: make([]byte, n)})
	}
	return append(out, &expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: want})
}

// ---- reading back ----

// findTable returns l4lb's table as the kernel lists it, or nil when it has
// none.
func (k *Kernel) findTable() (*nftables.Table, error) {
	tables, err := k.reader.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("list tables: %w", err)
	}
	for _, x := range tables {
		if x.Name == k.table {
			return x, nil
		}
	}
	return nil, nil
}

// observe reads l4lb's table from the kernel.
func (k *Kernel) observe(want *Ruleset) (*observed, error) {
	o := newObserved()
	t, err := k.findTable()
	if err != nil {
		return nil, err
	}
	if t == nil {
		return o, nil
	}
	o.table = true

	sets, err := k.tr.dumpSets(k.table)
	if err != nil {
		return nil, err
	}
	ids := setIDs(want)
	for _, d := range want.setDecls() {
		raw, ok := sets[d.name]
		if !ok {
			continue
		}
		o.sets[d.name] = raw.matches(k.nftSet(d, 0), setUserdata(d))
	}

	chains, err := k.reader.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("list chains: %w", err)
	}
	wanted := map[string]chainDecl{}
	for _, c := range want.chains() {
		wanted[c.name] = c
	}
	for _, c := range chains {
		if c.Table == nil || c.Table.Name != k.table {
			continue
		}
		w, ok := wanted[c.Name]
		if !ok {
			o.chains[c.Name] = chainOK // not wanted: dropped
			continue
		}
		if !sameHook(c, k.nftChain(w)) {
			o.chains[c.Name] = chainWrongHook
			continue
		}
		rules, err := k.reader.GetRules(t, c)
		if err != nil {
			return nil, fmt.Errorf("list rules of chain %s: %w", c.Name, err)
		}
		o.chains[c.Name] = chainOK
		if c.Name == chainLB {
			// Any set of counts will do, in l4lb's order: the plan
			// compares them with those in use.
			counts, ok := k.lbCounts(rules)
			o.lb = counts
			w = lbChainDecl(counts)
			if !ok {
				o.chains[c.Name] = chainWrongRules
				continue
			}
		}
		if !k.sameRules(rules, w, ids) {
			o.chains[c.Name] = chainWrongRules
		}
	}

	rd := newReader()
	for _, d := range want.setDecls() {
		if !o.sets[d.name] {
			continue
		}
		elems, err := k.reader.GetSetElements(k.nftSet(d, 0))
		if err != nil {
			return nil, fmt.Errorf("list elements of %s: %w", d.name, err)
		}
		if err := rd.addElems(d, elems); err != nil {
			return nil, fmt.Errorf("decode elements of %s: %w", d.name, err)
		}
	}
	rd.into(o)
	return o, nil
}

func sameHook(got, want *nftables.Chain) bool {
	if (got.Hooknum == nil) != (want.Hooknum == nil) {
		return false
	}
	if want.Hooknum == nil {
		return true
	}
	return *got.Hooknum == *want.Hooknum && got.Priority != nil && *got.Priority == *want.Priority &&
		got.Type == want.Type && got.Policy != nil && *got.Policy == *want.Policy
}

// sameRules compares rules by their encoded expressions.
func (k *Kernel) sameRules(got []*nftables.Rule, want chainDecl, ids map[string]uint32) bool {
	if len(got) != len(want.rules) {
		return false
	}
	for i, r := range want.rules {
		a, err1 := encodeExprs(got[i].Exprs)
		b, err2 := encodeExprs(k.ruleExprs(r, ids))
		if err1 != nil || err2 != nil || !bytes.Equal(a, b) {
			return false
		}
	}
	return true
}

// lbCounts reads the backend counts of chain lb's DNAT rules, as l4lb
// writes them: the IPv4 rules with ascending counts, the IPv6 rules with
// the same, and goto refuse. Whether the rules are exactly l4lb's is for
// the caller to check against lbChainDecl(counts).
func (k *Kernel) lbCounts(rules []*nftables.Rule) ([]int, bool) {
	if len(rules)%2 != 1 {
		return nil, false
	}
	counts := make([]int, 0, len(rules)/2)
	for _, r := range rules[:len(rules)/2] {
		n := 0
		for _, e := range r.Exprs {
			if ng, ok := e.(*expr.Numgen); ok {
				n = int(ng.Modulus)
			}
		}
		if n < 1 || n > MaxBackends || (len(counts) > 0 && n <= counts[len(counts)-1]) {
			return nil, false
		}
		counts = append(counts, n)
	}
	return counts, true
}

// encodeExprs marshals expressions for comparison; set ids, which the
// kernel does not report, are left out.
func encodeExprs(es []expr.Any) ([]byte, error) {
	var out []byte
	for _, e := range es {
		if l, ok := e.(*expr.Lookup); ok {
			c := *l
			c.SetID = 0
			e = &c
		}
		b, err := expr.Marshal(byte(nftables.TableFamilyINet), e)
		if err != nil {
			return nil, err
		}
		out = append(out, b...)
	}
	return out, nil
}

func (rd *reader) addElems(d setDecl, elems []nftables.SetElement) error {
	for _, e := range elems {
		switch d.kind {
		case kindVIPs:
			key, err := decodeVIPKey(e.Key, d.v6)
			if err != nil {
				return err
			}
			rd.elems[key] = e.Comment
		case kindBackends:
			key, slot, err := decodeBEKey(e.Key, d.v6)
			if err != nil {
				return err
			}
			be, err := decodeBEVal(e.Val, d.v6)
			if err != nil {
				return err
			}
			rd.setSlot(key, slot, be)
		case kindAddrs:
			a, ok := addrFrom(e.Key)
			if !ok {
				return fmt.Errorf("address of %d bytes", len(e.Key))
			}
			rd.ipvips = append(rd.ipvips, a)
		case kindPairs:
			a, err := decodePair(e.Key)
			if err != nil {
				return err
			}
			rd.hairpin = append(rd.hairpin, a)
		}
	}
	return nil
}

// rawSet is a set's definition as the kernel reports it.
type rawSet struct {
	flags, keyType, keyLen, dataType, dataLen uint32
	userdata                                  []byte
}

func (r rawSet) matches(s *nftables.Set, udata []byte) bool {
	wantFlags := uint32(0)
	dataType, dataLen := uint32(0), r.dataLen
	if s.IsMap {
		wantFlags |= unix.NFT_SET_MAP
		dataType = unix.NFT_DATA_VERDICT // the kernel reports the size of its verdict struct
		if s.DataType.Name != nftables.TypeVerdict.Name {
			dataType, dataLen = s.DataType.GetNFTMagic(), s.DataType.Bytes
		}
	}
	return r.flags == wantFlags && r.keyType == s.KeyType.GetNFTMagic() && r.keyLen == s.KeyType.Bytes &&
		r.dataType == dataType && r.dataLen == dataLen && bytes.Equal(r.userdata, udata)
}

// ---- transport ----

// transport sends batches on a netlink socket of its own.
type transport struct {
	netnsFd int
	c       *netlink.Conn
}

func dialTransport(netnsFd int) (*transport, error) {
	t := &transport{netnsFd: netnsFd}
	if err := t.dial(); err != nil {
		return nil, err
	}
	return t, nil
}

func (t *transport) dial() error {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: t.netnsFd})
	if err != nil {
		return fmt.Errorf("open netfilter netlink socket: %w", err)
	}
	// Errors carry the kernel's message. (Not capped: mdlayher/netlink
	// cannot parse extended acknowledgements of capped errors.)
	_ = c.SetOption(netlink.ExtendedAcknowledge, true)
	if err := forceBuffers(c, socketBuffer, socketBuffer); err != nil {
		c.Close()
		return err
	}
	t.c = c
	return nil
}

func (t *transport) close() error {
	if t.c == nil {
		return nil
	}
	err := t.c.Close()
	t.c = nil
	return err
}

// forceBuffers sizes a netlink socket's buffers beyond the sysctl limits
// (CAP_NET_ADMIN), so that large batches and their acknowledgements fit.
func forceBuffers(c *netlink.Conn, snd, rcv int) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		if snd > 0 {
			if e := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, snd); e != nil {
				serr = fmt.Errorf("set netlink send buffer: %w", e)
				return
			}
		}
		if rcv > 0 {
			if e := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcv); e != nil {
				serr = fmt.Errorf("set netlink receive buffer: %w", e)
			}
		}
	})
	return errors.Join(err, serr)
}

// primeDumps makes the kernel fill the dump messages it sends on the socket
// up to 32 KiB. It sizes them by the largest buffer a receive on the socket
// has offered, and mdlayher/netlink offers a page unless a message fills
// it. That matters for the backend map: each dump message costs the kernel
// a walk of the hash set from its start (it skips what earlier messages
// held), so with messages of a page a read-back of 500,000 backend elements
// took 75 s of kernel time, with 32 KiB a few seconds. One receive of 32
// KiB, of the answer to a harmless request (the ruleset's generation), is
// enough: the kernel remembers the size for the socket.
func primeDumps(c *netlink.Conn) error {
	req := netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETGEN), Flags: netlink.Request},
		Data:   []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0},
	}
	if _, err := c.Send(req); err != nil {
		return fmt.Errorf("netlink reader: ask the ruleset generation: %w", err)
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("netlink reader: %w", err)
	}
	buf := make([]byte, 32<<10)
	var rerr error
	err = rc.Read(func(fd uintptr) bool {
		_, _, _, _, rerr = unix.Recvmsg(int(fd), buf, nil, 0)
		return rerr != unix.EAGAIN && rerr != unix.EINTR
	})
	if err := errors.Join(err, rerr); err != nil {
		return fmt.Errorf("netlink reader: read the ruleset generation: %w", err)
	}
	return nil
}

// send sends one batch and waits for the acknowledgement of every message.
// The kernel applies a batch entirely or not at all; when it refuses one,
// the error names the message that failed.
func (t *transport) send(ctx context.Context, b batch) error {
	if t.c == nil {
		if err := t.dial(); err != nil {
			return err
		}
	}
	msgs := make([]netlink.Message, len(b.msgs))
	for i, m := range b.msgs {
		m.Header.Sequence, m.Header.PID, m.Header.Length = 0, 0, 0
		msgs[i] = m
	}
	deadline := time.Now().Add(2 * time.Minute)
	if d, ok := ctx.Deadline(); ok {
		deadline = d
	}
	if err := t.c.SetReadDeadline(deadline); err != nil {
		return err
	}
	if _, err := t.c.SendMessages(msgs); err != nil {
		t.close()
		return fmt.Errorf("send batch of %d messages: %w", len(b.desc), err)
	}
	// One acknowledgement per message, in order; an error takes the place of
	// the failing message's acknowledgement.
	for acked := 0; acked < len(b.desc); {
		replies, err := t.c.Receive()
		if err != nil {
			t.close() // drop whatever else the kernel queued for this batch
			if acked < len(b.desc) {
				return fmt.Errorf("%s: %w", b.desc[acked], err)
			}
			return err
		}
		for _, r := range replies {
			if r.Header.Type == netlink.Error {
				acked++
			}
		}
	}
	return nil
}

// dumpSets lists the sets of a table with the attributes that decide
// whether they are what l4lb wants. (google/nftables does not report a
// set's userdata, and mistakes a verdict map's data type for its key type.)
func (t *transport) dumpSets(table string) (map[string]rawSet, error) {
	if t.c == nil {
		if err := t.dial(); err != nil {
			return nil, err
		}
	}
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_SET_TABLE, Data: []byte(table + "\x00")}})
	if err != nil {
		return nil, err
	}
	req := netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETSET),
			Flags: netlink.Request | netlink.Dump,
		},
		Data: append([]byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0}, attrs...),
	}
	if err := t.c.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
		return nil, err
	}
	replies, err := t.c.Execute(req)
	if err != nil {
		t.close()
		return nil, fmt.Errorf("list sets: %w", err)
	}
	out := map[string]rawSet{}
	for _, m := range replies {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return nil, fmt.Errorf("decode set: %w", err)
		}
		var name string
		var s rawSet
		for ad.Next() {
			switch ad.Type() {
			case unix.NFTA_SET_NAME:
				name = ad.String()
			case unix.NFTA_SET_FLAGS:
				s.flags = beUint32(ad.Bytes())
			case unix.NFTA_SET_KEY_TYPE:
				s.keyType = beUint32(ad.Bytes())
			case unix.NFTA_SET_KEY_LEN:
				s.keyLen = beUint32(ad.Bytes())
			case unix.NFTA_SET_DATA_TYPE:
				s.dataType = beUint32(ad.Bytes())
			case unix.NFTA_SET_DATA_LEN:
				s.dataLen = beUint32(ad.Bytes())
			case unix.NFTA_SET_USERDATA:
				s.userdata = bytes.Clone(ad.Bytes())
			}
		}
		if err := ad.Err(); err != nil {
			return nil, fmt.Errorf("decode set %s: %w", name, err)
		}
		out[name] = s
	}
	return out, nil
}

func beUint32(b []byte) uint32 {
	if len(b) != 4 {
		return 0
	}
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

// ---- reading for an operator (l4lb explain) ----

// Snapshot reads l4lb's table as the kernel holds it: VIP elements with
// their comments, backend slots, refused addresses and the text
// of every rule (l4lb's rules by their expressions; anything else by its
// handle). It changes nothing.
func (k *Kernel) Snapshot() (*Snapshot, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	s := &Snapshot{Table: k.table, VIPs: map[vip.Key]SnapVIP{}, Slots: map[vip.Key]map[int]netip.AddrPort{},
		Chains: map[string][]SnapRule{}, Hooks: map[string]string{}}
	t, err := k.findTable()
	if err != nil {
		return nil, err
	}
	if t == nil {
		return s, nil
	}
	s.Exists = true
	chains, err := k.reader.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("list chains: %w", err)
	}
	rulesOf := map[string][]*nftables.Rule{}
	var names []string
	for _, c := range chains {
		if c.Table == nil || c.Table.Name != k.table {
			continue
		}
		rules, err := k.reader.GetRules(t, c)
		if err != nil {
			return nil, fmt.Errorf("list rules of chain %s: %w", c.Name, err)
		}
		rulesOf[c.Name] = rules
		names = append(names, c.Name)
		if c.Hooknum != nil {
			s.Hooks[c.Name] = hookName(*c.Hooknum)
		}
	}
	// The pools are in the refusal rules of the hooked chains.
	for _, r := range rulesOf[chainOutput] {
		if p, ok := decodeRefusePrefix(r.Exprs); ok {
			s.Pools = append(s.Pools, p)
		}
	}
	for _, name := range names {
		known, _ := knownRules(name, s.Pools)
		if name == chainLB {
			counts, _ := k.lbCounts(rulesOf[name])
			known = lbChainDecl(counts).rules
		}
		for _, r := range rulesOf[name] {
			s.Chains[name] = append(s.Chains[name], SnapRule{Handle: r.Handle, Text: k.ruleText(r, known)})
		}
	}

	sets, err := k.tr.dumpSets(k.table)
	if err != nil {
		return nil, err
	}
	for _, d := range (&Ruleset{}).setDecls() {
		if _, ok := sets[d.name]; !ok || d.kind == kindPairs {
			continue
		}
		elems, err := k.reader.GetSetElements(k.nftSet(d, 0))
		if err != nil {
			return nil, fmt.Errorf("list elements of %s: %w", d.name, err)
		}
		for _, e := range elems {
			switch d.kind {
			case kindVIPs:
				key, err := decodeVIPKey(e.Key, d.v6)
				if err != nil {
					return nil, fmt.Errorf("decode element of %s: %w", d.name, err)
				}
				s.VIPs[key] = SnapVIP{Set: d.name, Comment: e.Comment}
			case kindBackends:
				key, slot, err := decodeBEKey(e.Key, d.v6)
				if err != nil {
					return nil, fmt.Errorf("decode element of %s: %w", d.name, err)
				}
				be, err := decodeBEVal(e.Val, d.v6)
				if err != nil {
					return nil, fmt.Errorf("decode element of %s: %w", d.name, err)
				}
				if s.Slots[key] == nil {
					s.Slots[key] = map[int]netip.AddrPort{}
				}
				s.Slots[key][slot] = be
			case kindAddrs:
				if a, ok := addrFrom(e.Key); ok {
					s.IPVIPs = append(s.IPVIPs, a)
				}
			}
		}
	}
	return s, nil
}

// ruleText names a rule by the text of the known rule whose expressions it
// has, or by its handle.
func (k *Kernel) ruleText(r *nftables.Rule, known []rule) string {
	got, err := encodeExprs(r.Exprs)
	if err == nil {
		for _, w := range known {
			want, err := encodeExprs(k.ruleExprs(w, nil))
			if err == nil && bytes.Equal(got, want) {
				return w.text
			}
		}
	}
	return fmt.Sprintf("(rule handle %d: %d expressions l4lb did not write)", r.Handle, len(r.Exprs))
}

// decodeRefusePrefix recognises "ip daddr PREFIX goto refuse" (or ip6).
func decodeRefusePrefix(es []expr.Any) (netip.Prefix, bool) {
	var load *expr.Payload
	var data []byte
	bits := -1
	for _, e := range es {
		switch x := e.(type) {
		case *expr.Payload:
			load = x
		case *expr.Bitwise:
			bits = 0
			for _, m := range x.Mask {
				for ; m != 0; m <<= 1 {
					bits++
				}
			}
		case *expr.Cmp:
			if load != nil {
				data = x.Data
			}
		}
	}
	if load == nil || data == nil {
		return netip.Prefix{}, false
	}
	var full []byte
	switch load.Offset {
	case 16:
		full = make([]byte, 4)
	case 24:
		full = make([]byte, 16)
	default:
		return netip.Prefix{}, false
	}
	if len(data) > len(full) {
		return netip.Prefix{}, false
	}
	copy(full, data)
	if bits < 0 {
		bits = 8 * len(data)
	}
	a, _ := addrFrom(full)
	p, err := a.Prefix(bits)
	if err != nil {
		return netip.Prefix{}, false
	}
	// Only a rule that is exactly l4lb's refusal of that prefix counts.
	got, err1 := encodeExprs(es)
	want, err2 := encodeExprs((&Kernel{}).ruleExprs(refusePrefixRule(p), nil))
	if err1 != nil || err2 != nil || !bytes.Equal(got, want) {
		return netip.Prefix{}, false
	}
	return p, true
}

func hookName(h nftables.ChainHook) string {
	switch h {
	case *nftables.ChainHookPrerouting:
		return "prerouting"
	case *nftables.ChainHookInput:
		return "input"
	case *nftables.ChainHookForward:
		return "forward"
	case *nftables.ChainHookOutput:
		return "output"
	case *nftables.ChainHookPostrouting:
		return "postrouting"
	}
	return fmt.Sprintf("hook%d", h)
}

// TraceProbe says which packets a trace rule marks: those of one probe
// socket, by protocol, destination and source port.
type TraceProbe struct {
	Chain   string // name of the private chain, unique to this probe
	Proto   vip.Proto
	Dst     netip.AddrPort
	SrcPort uint16
}

// TraceChainPrefix starts the name of every probe chain, so that an
// operator (and a full resync, which drops chains it does not know) can
// tell them apart.
const TraceChainPrefix = "explain-trace-"

// traceChainPriority runs the probe chain before l4lb's dstnat chains
// (priority -100), at the priority of raw.
const traceChainPriority = -300

// TraceText is the text of the probe's rule, as nft lists it.
func (p TraceProbe) TraceText() string {
	return fmt.Sprintf("%s daddr %s %s dport %d %s sport %d meta nftrace set 1",
		ipOf(p.Dst.Addr().Is6()), p.Dst.Addr(), p.Proto, p.Dst.Port(), p.Proto, p.SrcPort)
}

// AddTrace adds a private base chain at the output hook of l4lb's table,
// before its nat chains, with one rule that sets nftrace on the probe's
// packets. remove deletes the chain again; call it whatever happens
// (a chain left behind by a killed process is dropped by the daemon's next
// full resync, which removes chains it does not know).
func (k *Kernel) AddTrace(ctx context.Context, p TraceProbe) (remove func(context.Context) error, err error) {
	if !strings.HasPrefix(p.Chain, TraceChainPrefix) {
		return nil, fmt.Errorf("trace chain %q: name must start with %q", p.Chain, TraceChainPrefix)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	enc, err := newEncoder()
	if err != nil {
		return nil, err
	}
	t := &nftables.Table{Name: k.table, Family: nftables.TableFamilyINet}
	accept := nftables.ChainPolicyAccept
	ch := &nftables.Chain{Name: p.Chain, Table: t, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookOutput,
		Priority: nftables.ChainPriorityRef(traceChainPriority), Policy: &accept}
	v6 := p.Dst.Addr().Is6()
	exprs := append(nfproto(v6),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{byte(p.Proto)}},
		loadAddr(v6, false, reg1),
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: addrBytes(p.Dst.Addr())},
		&expr.Payload{OperationType: expr.PayloadLoad, DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.BigEndian.PutUint16(p.Dst.Port())},
		&expr.Payload{OperationType: expr.PayloadLoad, DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.BigEndian.PutUint16(p.SrcPort)},
		&expr.Immediate{Register: reg1, Data: []byte{1}},
		&expr.Meta{Key: expr.MetaKeyNFTRACE, SourceRegister: true, Register: reg1},
	)
	enc.c.AddChain(ch)
	enc.c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: exprs})
	b, err := enc.take([]string{"add chain " + p.Chain + " (filter hook output priority -300)", "add rule " + p.Chain + " " + p.TraceText()})
	if err != nil {
		return nil, err
	}
	if err := k.tr.send(ctx, b); err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("this kernel does not support `meta nftrace set 1` in table %s: %w", k.table, err)
		}
		return nil, fmt.Errorf("add trace chain %s to table %s: %w", p.Chain, k.table, err)
	}
	remove = func(ctx context.Context) error {
		k.mu.Lock()
		defer k.mu.Unlock()
		enc, err := newEncoder()
		if err != nil {
			return err
		}
		enc.c.FlushChain(ch)
		enc.c.DelChain(ch)
		b, err := enc.take([]string{"flush chain " + p.Chain, "delete chain " + p.Chain})
		if err != nil {
			return err
		}
		if err := k.tr.send(ctx, b); err != nil {
			if errors.Is(err, unix.ENOENT) {
				return nil // already gone (a resync dropped it)
			}
			return fmt.Errorf("remove trace chain %s from table %s: %w", p.Chain, k.table, err)
		}
		return nil
	}
	return remove, nil
}
