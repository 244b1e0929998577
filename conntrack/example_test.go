package conntrack_test

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/l4lb/l4lb/conntrack"
	"github.com/l4lb/l4lb/vip"
)

// The sync loop holds a Cleaner and calls Applied after every successful
// apply of the ruleset. Here the Fake stands in for conntrack.New().
func ExampleCleaner() {
	vipAddr := netip.MustParseAddrPort("198.18.0.7:80")
	b1 := netip.MustParseAddrPort("198.19.0.11:31000")
	b2 := netip.MustParseAddrPort("198.19.0.12:31000")
	state := func(b1State vip.BackendState) vip.State {
		return vip.State{Pool4: netip.MustParsePrefix("198.18.0.0/16"), VIPs: []vip.VIP{{
			Name: "web.marathon.l4lb.thisdcos.directory", Addr: vipAddr.Addr(), Port: vipAddr.Port(), Proto: vip.TCP,
			Backends: []vip.Backend{{Addr: b1.Addr(), Port: b1.Port(), State: b1State}, {Addr: b2.Addr(), Port: b2.Port()}},
		}}}
	}
	client := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(netip.MustParseAddr("198.19.1.11"), port) }
	table := conntrack.NewFake(
		conntrack.Flow{Proto: vip.TCP, OrigSrc: client(40000), OrigDst: vipAddr, ReplySrc: b1, ReplyDst: client(40000)},
		conntrack.Flow{Proto: vip.TCP, OrigSrc: client(40001), OrigDst: vipAddr, ReplySrc: b2, ReplyDst: client(40001)},
	)
	c := conntrack.NewCleaner(table, true, nil)
	ctx := context.Background()

	r, _ := c.Applied(ctx, state(vip.Active)) // start: a full pass
	fmt.Printf("full=%v deleted=%d\n", r.Full, r.Deleted)
	r, _ = c.Applied(ctx, state(vip.Draining)) // draining keeps its flows
	fmt.Printf("full=%v deleted=%d\n", r.Full, r.Deleted)
	r, _ = c.Applied(ctx, state(vip.Unhealthy)) // unhealthy loses them
	fmt.Printf("full=%v deleted=%d: %s\n", r.Full, r.Deleted, table.Deleted()[0])
	// Output:
	// full=true deleted=0
	// full=false deleted=0
	// full=false deleted=1: tcp 198.19.1.11:40000 -> 198.18.0.7:80 via 198.19.0.11:31000
}
