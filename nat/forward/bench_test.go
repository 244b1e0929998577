package forward

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/l4lb/l4lb/internal/netns"
)

// BenchmarkSync measures a Sync that changes nothing, the cost paid at
// every sync of the daemon, in a namespace:
//
//	accept      FORWARD accepts: one listing a family
//	drop        FORWARD drops, l4lb's rules in place: two listings a family
//	drop-big    the same with 2,000 other rules in the filter table
//	list        one bare `iptables -S FORWARD` and `ip6tables -S FORWARD`,
//	            the floor
//
// Run with: go test ./nat/forward -run '^$' -bench Sync -benchtime 20x
func BenchmarkSync(b *testing.B) {
	for _, c := range []struct {
		name   string
		policy string
		extra  int
		bare   bool
	}{
		{"accept", "ACCEPT", 0, false},
		{"drop", "DROP", 0, false},
		{"drop-big", "DROP", 2000, false},
		{"list", "DROP", 0, true},
	} {
		b.Run(c.name, func(b *testing.B) {
			ns := netns.ForTest(b, "l4fb", "iptables", "ip6tables")
			for _, cmd := range []string{"iptables", "ip6tables"} {
				if _, err := ns.Run(cmd, "-P", "FORWARD", c.policy); err != nil {
					b.Fatal(err)
				}
			}
			if c.extra > 0 {
				var sb strings.Builder
				sb.WriteString("*filter\n:FOREIGN - [0:0]\n-A FORWARD -j FOREIGN\n")
				for i := range c.extra {
					fmt.Fprintf(&sb, "-A FOREIGN -s 198.19.%d.%d -p tcp --dport %d -j ACCEPT\n", i/250, i%250+1, 1000+i)
				}
				sb.WriteString("COMMIT\n")
				if _, err := ns.RunStdin([]byte(sb.String()), "iptables-restore", "--noflush"); err != nil {
					b.Fatal(err)
				}
			}
			f, err := ns.Open()
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			k := New(WithNetNS(int(f.Fd())))
			ctx := context.Background()
			if _, err := k.Sync(ctx, testWant); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for range b.N {
				if c.bare {
					err = k.do(func() error {
						for _, be := range k.backends {
							if be.present == nil {
								if _, err := be.t.List(tableFilter, chainForward); err != nil {
									return err
								}
							}
						}
						return nil
					})
				} else {
					var res Result
					res, err = k.Sync(ctx, testWant)
					if err == nil && res.Changed() {
						err = fmt.Errorf("steady Sync changed %d", res.Changes)
					}
				}
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/sync")
		})
	}
}
