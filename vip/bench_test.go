package vip

import (
	"fmt"
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
