package conntrack

import (
	"fmt"
	"os"
	"strings"
)

// looseSysctl is read in the namespace of the process that reads it: the
// agent's.
const looseSysctl = "/proc/sys/net/netfilter/nf_conntrack_tcp_loose"

// LoosePickup reports whether the kernel picks up a TCP packet of a flow it
// has no entry for as a new flow (nf_conntrack_tcp_loose, on by default).
// The cleanup relies on it: after an entry is deleted, the client's next
// packet is such a packet, and only a picked-up packet goes through the
// VIP's chain to a live backend, which resets it. With the sysctl off the
// packet is invalid to conntrack and is not translated at all.
func LoosePickup() (bool, error) {
	b, err := os.ReadFile(looseSysctl)
	if err != nil {
		return false, fmt.Errorf("read %s: %w", looseSysctl, err)
	}
	return strings.TrimSpace(string(b)) != "0", nil
}
