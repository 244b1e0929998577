package dns

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	mdns "github.com/miekg/dns"
)

// EDNS0 payload sizes (RFC 6891).
const (
	// advertisedUDPSize is the payload size this server announces in its
	// OPT record: the DNS flag day 2020 value, safe from fragmentation.
	advertisedUDPSize = 1232
	// maxUDPSize caps the client's announced size for answers over UDP.
	maxUDPSize = 4096
)

// Handler answers DNS queries: from the published Zone for names in the
// zone, by forwarding for the others (or REFUSED without upstreams). It
// implements mdns.Handler and is safe for concurrent use; ServeDNS reads the
// zone from an atomic pointer and never modifies the request.
type Handler struct {
	snap atomic.Pointer[snapshot]

	origin string  // canonical apex
	nsName string  // the name server's host name, "ns." + origin
	ns     mdns.RR // the apex NS record
	glue   []mdns.RR
	glue4  []mdns.RR // glue A records, the answer to "A ns.<zone>"
	glue6  []mdns.RR
	ra     bool // recursion available: there are upstreams

	fwd *forwarder // nil without upstreams
	// base bounds forwarded queries: it is cancelled when the server stops.
	base    context.Context
	metrics *metrics
}

// snapshot is what one Publish installs: the zone and its SOA record.
type snapshot struct {
	zone *Zone
	soa  mdns.RR
}

// NewHandler returns a handler for cfg's zone and upstreams, serving an empty
// zone until the first Publish. cfg.Listen only supplies the addresses of
// the zone's name server (glue for the NS record); a handler opens no
// socket. Metrics are registered with cfg.Registerer when it is not nil.
func NewHandler(cfg Config) (*Handler, error) {
	c, err := cfg.parse()
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	return newHandler(c, m, context.Background()), nil
}

func newHandler(c parsedConfig, m *metrics, base context.Context) *Handler {
	h := &Handler{
		origin:  c.origin,
		nsName:  "ns." + c.origin,
		base:    base,
		metrics: m,
	}
	h.ns = &mdns.NS{
		Hdr: mdns.RR_Header{Name: h.origin, Rrtype: mdns.TypeNS, Class: mdns.ClassINET, Ttl: TTL},
		Ns:  h.nsName,
	}
	seen := map[netip.Addr]bool{}
	for _, ap := range c.listen {
		a := ap.Addr()
		if a.IsUnspecified() || seen[a] {
			continue
		}
		seen[a] = true
		if a.Is4() {
			h.glue4 = append(h.glue4, newA(h.nsName, a))
		} else {
			h.glue6 = append(h.glue6, newAAAA(h.nsName, a))
		}
	}
	// Answers share these slices: clipped, an append to them copies.
	h.glue4, h.glue6 = slices.Clip(h.glue4), slices.Clip(h.glue6)
	h.glue = slices.Clip(append(slices.Clone(h.glue4), h.glue6...))
	if len(c.upstreams) > 0 {
		h.fwd = newForwarder(c.upstreams, c.upstreamTimeout, m)
		h.ra = true
	}
	h.Publish(nil)
	return h
}

// Publish makes z the zone the handler answers from; nil publishes an empty
// zone. z should be built for the handler's zone name: names outside it are
// never looked up in z. Queries being answered keep the zone they started
// with.
func (h *Handler) Publish(z *Zone) {
	if z == nil {
		z = build(h.origin, nil)
	}
	soa := &mdns.SOA{
		Hdr:     mdns.RR_Header{Name: h.origin, Rrtype: mdns.TypeSOA, Class: mdns.ClassINET, Ttl: TTL},
		Ns:      h.nsName,
		Mbox:    "hostmaster." + h.origin,
		Serial:  z.Serial(),
		Refresh: 3600,
		Retry:   600,
		Expire:  86400,
		Minttl:  TTL, // negative answers are cached as briefly as positive ones
	}
	h.snap.Store(&snapshot{zone: z, soa: soa})
	h.metrics.records.Set(float64(z.Len()))
}

// Zone returns the zone being served.
func (h *Handler) Zone() *Zone { return h.snap.Load().zone }

// ServeDNS answers one query. It implements mdns.Handler.
func (h *Handler) ServeDNS(w mdns.ResponseWriter, r *mdns.Msg) {
	start := time.Now()
	qtype, rcode := h.serve(w, r)
	h.metrics.observe(qtype, rcode, time.Since(start))
}

// serve answers r and returns the query type and the answer's rcode for the
// metrics.
func (h *Handler) serve(w mdns.ResponseWriter, r *mdns.Msg) (qtype uint16, rcode int) {
	if len(r.Question) != 1 || r.Response {
		m := new(mdns.Msg)
		m.SetRcodeFormatError(r)
		m.Question = nil
		return 0, h.write(w, m, nil)
	}
	q := r.Question[0]
	opt := r.IsEdns0()
	switch {
	case r.Opcode != mdns.OpcodeQuery:
		return q.Qtype, h.reply(w, r, opt, mdns.RcodeNotImplemented)
	case opt != nil && opt.Version() != 0:
		// RFC 6891 6.1.3: only version 0 exists.
		return q.Qtype, h.reply(w, r, opt, mdns.RcodeBadVers)
	}
	name := strings.ToLower(q.Name) // returns q.Name itself when it has no upper case
	if !inZone(name, h.origin) {
		if h.fwd == nil {
			return q.Qtype, h.reply(w, r, opt, mdns.RcodeRefused)
		}
		return q.Qtype, h.forward(w, r, opt)
	}
	if q.Qclass != mdns.ClassINET && q.Qclass != mdns.ClassANY {
		return q.Qtype, h.reply(w, r, opt, mdns.RcodeRefused)
	}
	if q.Qtype == mdns.TypeAXFR || q.Qtype == mdns.TypeIXFR {
		return q.Qtype, h.reply(w, r, opt, mdns.RcodeRefused) // no zone transfers
	}

	snap := h.snap.Load()
	m := new(mdns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	m.RecursionAvailable = h.ra
	n := snap.zone.node(name)
	switch {
	case name == h.origin:
		switch q.Qtype {
		case mdns.TypeSOA:
			m.Answer = []mdns.RR{snap.soa}
		case mdns.TypeNS:
			m.Answer = []mdns.RR{h.ns}
			m.Extra = h.glue
		case mdns.TypeANY:
			m.Answer = []mdns.RR{snap.soa, h.ns}
			m.Extra = h.glue
		}
		if n != nil {
			m.Answer = append(m.Answer, addrRecords(n, q)...)
		}
	case n != nil:
		m.Answer = addrRecords(n, q)
	case name == h.nsName:
		switch q.Qtype {
		case mdns.TypeA:
			m.Answer = h.glue4
		case mdns.TypeAAAA:
			m.Answer = h.glue6
		case mdns.TypeANY:
			m.Answer = h.glue
		}
		m.Answer = renamed(m.Answer, q.Name)
	default:
		m.Rcode = mdns.RcodeNameError
	}
	if len(m.Answer) == 0 {
		// NXDOMAIN, or NODATA: the name exists without records of this
		// type. Either way the SOA goes in the authority section, so that
		// the answer is cached for the SOA minimum (RFC 2308).
		m.Ns = []mdns.RR{snap.soa}
	}
	return q.Qtype, h.write(w, m, opt)
}

// addrRecords returns the node's records that answer q, with the owner name
// spelled as in the question (the shared records when it is in lower case).
func addrRecords(n *node, q mdns.Question) []mdns.RR {
	var rrs []mdns.RR
	switch q.Qtype {
	case mdns.TypeA:
		rrs = n.rrA
	case mdns.TypeAAAA:
		rrs = n.rrAAAA
	case mdns.TypeANY:
		rrs = append(append(make([]mdns.RR, 0, len(n.rrA)+len(n.rrAAAA)), n.rrA...), n.rrAAAA...)
	}
	return renamed(rrs, q.Name)
}

// renamed returns rrs with name as owner: rrs itself when the names are
// equal, copies otherwise (the shared records are never modified).
func renamed(rrs []mdns.RR, name string) []mdns.RR {
	if len(rrs) == 0 || rrs[0].Header().Name == name {
		return rrs
	}
	out := make([]mdns.RR, len(rrs))
	for i, rr := range rrs {
		c := mdns.Copy(rr)
		c.Header().Name = name
		out[i] = c
	}
	return out
}

// reply writes an answer with only an rcode.
func (h *Handler) reply(w mdns.ResponseWriter, r *mdns.Msg, opt *mdns.OPT, rcode int) int {
	m := new(mdns.Msg)
	m.SetRcode(r, rcode)
	m.RecursionAvailable = h.ra
	return h.write(w, m, opt)
}

// write finishes m (OPT record, truncation to what the client takes) and
// sends it. It returns m's rcode.
func (h *Handler) write(w mdns.ResponseWriter, m *mdns.Msg, opt *mdns.OPT) int {
	if opt != nil && m.IsEdns0() == nil {
		// RFC 3225: the DO bit of the query is copied to the answer.
		m.SetEdns0(advertisedUDPSize, opt.Do())
	}
	if isTCP(w) {
		m.Compress = true
	} else {
		m.Truncate(udpSize(opt)) // sets TC when records had to go
	}
	_ = w.WriteMsg(m) // a client that went away is nobody's error
	return m.Rcode
}

// udpSize is the largest answer the client takes over UDP: 512 bytes
// without EDNS0, else its announced size between 512 and maxUDPSize.
func udpSize(opt *mdns.OPT) int {
	if opt == nil {
		return mdns.MinMsgSize
	}
	return min(max(int(opt.UDPSize()), mdns.MinMsgSize), maxUDPSize)
}

// isTCP reports whether the query came over TCP.
func isTCP(w mdns.ResponseWriter) bool {
	if _, ok := w.(*udpWriter); ok {
		return false // without building an address
	}
	_, ok := w.RemoteAddr().(*net.TCPAddr)
	return ok
}

// forwards reports whether the handler forwards r: answering it waits on
// upstreams.
func (h *Handler) forwards(r *mdns.Msg) bool {
	return h.fwd != nil && len(r.Question) == 1 && !inZone(strings.ToLower(r.Question[0].Name), h.origin)
}

// forward relays the query to the upstreams and their answer to the client,
// or answers SERVFAIL when no upstream answered.
func (h *Handler) forward(w mdns.ResponseWriter, r *mdns.Msg, opt *mdns.OPT) int {
	tcp := isTCP(w)
	resp, err := h.fwd.exchange(h.base, r, tcp)
	if err != nil {
		return h.reply(w, r, opt, mdns.RcodeServerFailure)
	}
	resp.Id = r.Id
	resp.RecursionAvailable = true // this server recursed, through its upstreams
	return h.write(w, resp, opt)
}
