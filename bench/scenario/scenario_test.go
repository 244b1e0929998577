package scenario

import (
	"net/netip"
	"testing"

	"github.com/l4lb/l4lb/vip"
)

func probe(n int, checked bool) Service {
	s := Service{Name: "probe", Port: 80, HealthChecked: checked}
	for i := range n {
		s.Backends = append(s.Backends, Backend{Addr: netip.AddrPortFrom(netip.MustParseAddr("198.19.0.11"), uint16(8080+i))})
	}
	return s
}

func TestBuild(t *testing.T) {
	st, err := Spec{Total: 50, FillerBackends: 10, Services: []Service{probe(3, false)}}.Build()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.VIPs) != 50 {
		t.Fatalf("%d VIPs, want 50", len(st.VIPs))
	}
	p, ok := st.VIP("probe")
	if !ok {
		t.Fatal("no probe VIP")
	}
	if p.Name != "probe.marathon.l4lb.thisdcos.directory" || p.Port != 80 || p.Proto != vip.TCP {
		t.Errorf("probe VIP %+v", p)
	}
	if !Pool4.Contains(p.Addr) {
		t.Errorf("probe address %s outside %s", p.Addr, Pool4)
	}
	if len(p.Active()) != 3 {
		t.Errorf("probe has %d active backends, want 3", len(p.Active()))
	}
	seen := map[netip.AddrPort]bool{}
	for i := range 49 {
		v, ok := st.VIP(FillerName(i))
		if !ok {
			t.Fatalf("no filler %d", i)
		}
		if len(v.Active()) != 10 {
			t.Fatalf("filler %d has %d backends", i, len(v.Active()))
		}
		for _, b := range v.Backends {
			if seen[b.AddrPort()] {
				t.Fatalf("backend %s used twice", b.AddrPort())
			}
			seen[b.AddrPort()] = true
			if !netip.MustParsePrefix("198.19.16.0/20").Contains(b.Addr) {
				t.Fatalf("filler backend %s outside 198.19.16.0/20", b.Addr)
			}
		}
	}
}

func TestFillerBackendsSpread(t *testing.T) {
	// 50,000 VIPs x 10 backends: all distinct, ports in range.
	seen := make(map[netip.AddrPort]bool, 500000)
	for i := 0; i < 50000; i += 7 {
		for j := range 10 {
			b := fillerBackend(i, j, 10)
			if seen[b] {
				t.Fatalf("duplicate backend %s", b)
			}
			seen[b] = true
			if b.Port() < fillerPortBase || b.Port() > fillerPortBase+200 {
				t.Fatalf("port %d out of range", b.Port())
			}
		}
	}
}

func TestHealth(t *testing.T) {
	p := probe(3, true)
	p.Backends[1].Unhealthy = true
	st, err := Spec{Total: 1, Services: []Service{p}}.Build()
	if err != nil {
		t.Fatal(err)
	}
	v, _ := st.VIP("probe")
	if len(v.Active()) != 2 {
		t.Fatalf("%d active backends, want 2", len(v.Active()))
	}
	for _, b := range v.Backends {
		want := vip.Active
		if b.Addr == p.Backends[1].Addr.Addr() && b.Port == p.Backends[1].Addr.Port() {
			want = vip.Unhealthy
		}
		if b.State != want {
			t.Errorf("backend %s: %s, want %s", b.AddrPort(), b.State, want)
		}
	}
}

func TestOrdered(t *testing.T) {
	st, err := Spec{Total: 101, FillerBackends: 1, Services: []Service{probe(1, false)}}.Build()
	if err != nil {
		t.Fatal(err)
	}
	o := st.Ordered("probe")
	if len(o) != 101 {
		t.Fatalf("%d VIPs", len(o))
	}
	if ShortName(o[50]) != "probe" {
		t.Errorf("middle is %s, want probe", ShortName(o[50]))
	}
	names := map[string]bool{}
	for _, v := range o {
		names[v.Name] = true
	}
	if len(names) != 101 {
		t.Errorf("Ordered lost or duplicated VIPs: %d distinct", len(names))
	}
}
