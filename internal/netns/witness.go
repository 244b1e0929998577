package netns

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
)

// ResetWitness records, inside one host's namespace, every TCP reset that
// host sends from a port: the kernel adds the reset's destination (the
// peer's address and port) to a set of a table of the witness's own, so a
// test can ask afterwards "did this backend reset that client?" without
// watching events as they happen. A reset a client sees may answer a
// packet it sent long before it noticed (a delayed ACK that crossed a
// conntrack flush), so only a record kept by the kernel is a witness that
// does not depend on timing.
type ResetWitness struct {
	ns   *NS
	port uint16
}

// witnessTable is the table's name; it lives in the witness host's
// namespace, never in the agent's.
const witnessTable = "l4lbwitness"

// WatchResets starts recording the resets that n sends from port.
func (n *NS) WatchResets(port uint16) (*ResetWitness, error) {
	script := fmt.Sprintf(`table inet %[1]s {
	set rst4 {
		type ipv4_addr . inet_service
		flags dynamic
	}
	set rst6 {
		type ipv6_addr . inet_service
		flags dynamic
	}
	chain out {
		type filter hook output priority filter; policy accept;
		tcp sport %[2]d tcp flags rst add @rst4 { ip daddr . tcp dport }
		tcp sport %[2]d tcp flags rst add @rst6 { ip6 daddr . tcp dport }
	}
}
`, witnessTable, port)
	if _, err := n.RunStdin([]byte(script), "nft", "-f", "-"); err != nil {
		return nil, fmt.Errorf("reset witness in %s: %w", n.Name, err)
	}
	return &ResetWitness{ns: n, port: port}, nil
}

// Name is the name of the namespace whose resets the witness records.
func (w *ResetWitness) Name() string { return w.ns.Name }

// Reset reports whether the host has reset peer since WatchResets.
func (w *ResetWitness) Reset(peer netip.AddrPort) (bool, error) {
	all, err := w.Peers()
	if err != nil {
		return false, err
	}
	return all[peer], nil
}

// Peers returns every peer the host has reset since WatchResets.
func (w *ResetWitness) Peers() (map[netip.AddrPort]bool, error) {
	out := map[netip.AddrPort]bool{}
	for _, set := range []string{"rst4", "rst6"} {
		js, err := w.ns.Run("nft", "-j", "list", "set", "inet", witnessTable, set)
		if err != nil {
			return nil, err
		}
		peers, err := parseWitnessSet(js)
		if err != nil {
			return nil, fmt.Errorf("reset witness in %s: set %s: %w", w.ns.Name, set, err)
		}
		for _, p := range peers {
			out[p] = true
		}
	}
	return out, nil
}

// parseWitnessSet reads the elements of `nft -j list set` for a set of
// address . port: each is {"concat": [addr, port]}, wrapped in
// {"elem": {"val": ...}} when the element carries more than its key.
func parseWitnessSet(js string) ([]netip.AddrPort, error) {
	var doc struct {
		Nftables []struct {
			Set *struct {
				Elem []json.RawMessage `json:"elem"`
			} `json:"set"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(js), &doc); err != nil {
		return nil, err
	}
	var peers []netip.AddrPort
	for _, o := range doc.Nftables {
		if o.Set == nil {
			continue
		}
		for _, raw := range o.Set.Elem {
			var e struct {
				Concat []json.RawMessage `json:"concat"`
				Elem   *struct {
					Val struct {
						Concat []json.RawMessage `json:"concat"`
					} `json:"val"`
				} `json:"elem"`
			}
			if err := json.Unmarshal(raw, &e); err != nil {
				return nil, fmt.Errorf("element %s: %w", raw, err)
			}
			parts := e.Concat
			if e.Elem != nil {
				parts = e.Elem.Val.Concat
			}
			if len(parts) != 2 {
				return nil, fmt.Errorf("element %s: want address . port", raw)
			}
			var addr string
			var port uint16
			if err := json.Unmarshal(parts[0], &addr); err != nil {
				return nil, fmt.Errorf("element %s: %w", raw, err)
			}
			if err := json.Unmarshal(parts[1], &port); err != nil {
				return nil, fmt.Errorf("element %s: %w", raw, err)
			}
			a, err := netip.ParseAddr(strings.TrimSpace(addr))
			if err != nil {
				return nil, fmt.Errorf("element %s: %w", raw, err)
			}
			peers = append(peers, netip.AddrPortFrom(a, port))
		}
	}
	return peers, nil
}
