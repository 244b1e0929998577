// Package conntrack removes the connection-tracking entries that l4lb's
// ruleset no longer stands behind: flows pinned by DNAT to a backend that
// failed, whose task is gone, or whose VIP was deleted. Draining backends
// keep their flows.
//
// Deciding what to delete is a pure, level-triggered function of the flows
// and the desired state (Stale), so that a missed event, a restart, a
// deleted VIP and N->0 or 0->N backends are all covered by the next pass.
// The kernel adapter (Kernel) only lists and deletes: over
// github.com/ti-mo/conntrack (kernel.go), except for the dumps narrowed to
// some backends, which ti-mo cannot ask for (filtered.go); Fake stands in
// for it in the sync loop's tests. Cleanup ties the three
// together, and Cleaner runs it after every ruleset change, narrowed to the
// backends that lost their place (Lost), with a full pass at start, after a
// failure and on demand.
//
// After an entry is deleted, the client's next packet is tracked as a new
// flow, goes through the nat chains again and is DNATed to a live backend:
// a TCP client gets a reset from that backend (it has no such socket), a
// UDP flow simply moves there.
package conntrack

import (
	"fmt"
	"net/netip"

	"github.com/l4lb/l4lb/vip"
)

// Flow is one conntrack entry as l4lb sees it: the original direction
// (client to VIP) and the reply direction (backend to client, after DNAT),
// its zone and its id.
type Flow struct {
	Proto    vip.Proto      // IANA protocol number
	OrigSrc  netip.AddrPort // the client
	OrigDst  netip.AddrPort // what the client asked for: a VIP, for l4lb's flows
	ReplySrc netip.AddrPort // who answers: the backend, when the flow was DNATed
	ReplyDst netip.AddrPort // the client again, or the masquerade address (hairpin)
	Zone     uint16         // conntrack zone, 0 by default
	ID       uint32         // kernel id of the entry, as listed (Delete names the entry by its tuples, not by id)
}

// DNATed reports whether the flow's destination was translated: the reply
// comes from somewhere else than where the client sent it.
func (f Flow) DNATed() bool { return f.ReplySrc != f.OrigDst }

func (f Flow) String() string {
	return fmt.Sprintf("%s %s -> %s via %s", f.Proto, f.OrigSrc, f.OrigDst, f.ReplySrc)
}
