package vip

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

// syntheticApps is a Marathon response of n apps with one VIP and b tasks
// each.
func syntheticApps(n, b int) []byte {
	var sb strings.Builder
	sb.WriteString(`{"apps": [`)
	for i := range n {
		if i > 0 {
			sb.WriteByte(',')
		}
		fmt.Fprintf(&sb, `{"id": "/svc%d", "portDefinitions": [{"port": 0, "protocol": "tcp", "labels": {"VIP_0": "svc%d:80"}}], "tasks": [`, i, i)
		for j := range b {
			if j > 0 {
				sb.WriteByte(',')
			}
			fmt.Fprintf(&sb, `{"id": "svc%d.%d", "host": "198.19.%d.%d", "ports": [%d], "state": "TASK_RUNNING"}`, i, j, (i*b+j)/250%250, 1+(i*b+j)%250, 10000+j)
		}
		sb.WriteString(`]}`)
	}
	sb.WriteString(`]}`)
	return []byte(sb.String())
}

// BenchmarkDesired measures the model's share of a sync: parsing Marathon's
// answer and computing the desired state, at 1,000 and 10,000 apps with 10
// tasks each. Run: go test ./vip -run '^$' -bench Desired -benchmem
func BenchmarkDesired(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		data := syntheticApps(n, 10)
		b.Run(fmt.Sprintf("apps=%d/parse", n), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for i := 0; i < b.N; i++ {
				if _, _, err := ParseApps(data); err != nil {
					b.Fatal(err)
				}
			}
		})
		apps, _, _ := ParseApps(data)
		b.Run(fmt.Sprintf("apps=%d/desired", n), func(b *testing.B) {
			var prev Allocations
			for i := 0; i < b.N; i++ {
				s, _ := Desired(apps, Config{Pool4: testPool4, Pool6: testPool6, Previous: prev})
				prev = s.Allocations
			}
		})
	}
}

// BenchmarkDesiredIPVIPs measures the IP VIP guard's share: 10,000 apps
// with 10 tasks each, every app also declaring an IP VIP, on an agent with
// 5,000 directly connected /32 routes (a Calico host's pods). Compare with
// BenchmarkDesired/apps=10000/desired. Run:
// go test ./vip -run '^$' -bench DesiredIPVIPs -benchmem
func BenchmarkDesiredIPVIPs(b *testing.B) {
	const n = 10000
	data := strings.Replace(string(syntheticApps(n, 10)), `"labels": {"VIP_0": "svc`, `"labels": {"VIP_1": "198.18.255.1:80", "VIP_0": "svc`, -1)
	apps, _, err := ParseApps([]byte(data))
	if err != nil {
		b.Fatal(err)
	}
	// Every app its own IP VIP address, outside the pool.
	for i := range apps {
		apps[i].PortDefinitions[0].Labels["VIP_1"] = fmt.Sprintf("198.21.%d.%d:80", i/250, 1+i%250)
	}
	local := &LocalNets{Own: []netip.Prefix{netip.MustParsePrefix("198.19.0.1/32")}}
	for i := range 5000 {
		local.Connected = append(local.Connected, netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 20, byte(i / 250), byte(1 + i%250)}), 32))
	}
	for _, c := range []struct {
		name  string
		guard Guard
	}{{"static", Guard{}}, {"routes=5000", Guard{Local: local}}} {
		b.Run(c.name, func(b *testing.B) {
			var prev Allocations
			for i := 0; i < b.N; i++ {
				s, problems := Desired(apps, Config{Pool4: testPool4, Pool6: testPool6, Previous: prev, Guard: c.guard})
				if len(problems) != 0 || len(s.VIPs) != 2*n {
					b.Fatalf("%d VIPs, problems %v", len(s.VIPs), problems[:min(3, len(problems))])
				}
				prev = s.Allocations
			}
		})
	}
}
