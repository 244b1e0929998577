package layout

import (
	"bytes"
	"net/netip"
	"regexp"
	"strings"
	"testing"

	"github.com/l4lb/l4lb/bench/scenario"
)

var testKube = Kube{
	Namespace:   "bench",
	PodCIDR:     netip.MustParsePrefix("198.19.1.0/24"),
	ServiceCIDR: scenario.Pool4,
	NodeIP:      netip.MustParseAddr("198.19.0.1"),
}

func testState(t *testing.T, total, probeBackends, fillerBackends int) *scenario.State {
	t.Helper()
	p := scenario.Service{Name: "probe", Port: 80}
	for i := range probeBackends {
		p.Backends = append(p.Backends, scenario.Backend{Addr: netip.AddrPortFrom(netip.MustParseAddr("198.19.0.11"), uint16(8080+i))})
	}
	st, err := scenario.Spec{Total: total, FillerBackends: fillerBackends, Services: []scenario.Service{p}}.Build()
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestKubeNFTShape(t *testing.T) {
	st := testState(t, 3, 3, 2)
	var b bytes.Buffer
	if err := testKube.WriteKubeNFT(&b, st.VIPs); err != nil {
		t.Fatal(err)
	}
	text := b.String()
	p, _ := st.VIP("probe")
	svc := regexp.MustCompile(`add chain ip kube-proxy (service-[A-Z2-7]{8}-bench/probe/tcp/p80)\n`).FindStringSubmatch(text)
	if svc == nil {
		t.Fatalf("no service chain for probe:\n%s", text)
	}
	for _, want := range []string{
		"add table ip kube-proxy { comment \"rules for kube-proxy\" ; }\n",
		"add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ;",
		"add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }\n",
		"add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips\n",
		"add rule ip kube-proxy " + svc[1] + " ip daddr " + p.Addr.String() + " ip saddr != 198.19.1.0/24 jump mark-for-masquerade\n",
		"add rule ip kube-proxy " + svc[1] + " numgen random mod 3 vmap { 0 : goto endpoint-",
		"add element ip kube-proxy service-ips { " + p.Addr.String() + " . tcp . 80 : goto " + svc[1] + " }\n",
		"add element ip kube-proxy cluster-ips { " + p.Addr.String() + " }\n",
		"meta l4proto tcp dnat to 198.19.0.11:8082\n",
		"add rule ip kube-proxy cluster-ips-check ip daddr { 198.18.0.0/16 } drop",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("missing %q", want)
		}
	}
	// A chain per service and per endpoint: 3 services, 3+2+2 endpoints.
	if n := len(regexp.MustCompile(`add chain ip kube-proxy service-[A-Z2-7]{8}-`).FindAllString(text, -1)); n != 3 {
		t.Errorf("%d service chains, want 3", n)
	}
	if n := strings.Count(text, "add chain ip kube-proxy endpoint-"); n != 7 {
		t.Errorf("%d endpoint chains, want 7", n)
	}
	// Every chain a rule jumps to is declared before.
	declared := map[string]bool{}
	for _, line := range strings.Split(text, "\n") {
		if c, ok := strings.CutPrefix(line, "add chain ip kube-proxy "); ok {
			declared[strings.Fields(c)[0]] = true
		}
		for _, m := range regexp.MustCompile(`goto (endpoint-\S+)`).FindAllStringSubmatch(line, -1) {
			if !declared[m[1]] {
				t.Errorf("goto %s before its chain exists", m[1])
			}
		}
	}
}

func TestKubeNFTUpdate(t *testing.T) {
	old := testState(t, 1, 3, 0)
	updated := testState(t, 1, 2, 0)
	o, _ := old.VIP("probe")
	n, _ := updated.VIP("probe")
	var b bytes.Buffer
	if err := testKube.WriteKubeNFTUpdate(&b, o, n); err != nil {
		t.Fatal(err)
	}
	text := b.String()
	if !strings.Contains(text, "numgen random mod 2 vmap") {
		t.Errorf("update does not pick among 2 endpoints:\n%s", text)
	}
	if !regexp.MustCompile(`flush chain ip kube-proxy service-\S+/probe/tcp/p80\n`).MatchString(text) {
		t.Errorf("update does not flush the service chain:\n%s", text)
	}
	if !regexp.MustCompile(`delete chain ip kube-proxy endpoint-\S+__198\.19\.0\.11/8082\n`).MatchString(text) {
		t.Errorf("update does not delete the gone endpoint's chain:\n%s", text)
	}
}

func TestKubeIPTablesShape(t *testing.T) {
	st := testState(t, 5, 3, 2)
	var b bytes.Buffer
	if err := testKube.WriteKubeIPTables(&b, st.Ordered("probe")); err != nil {
		t.Fatal(err)
	}
	text := b.String()
	p, _ := st.VIP("probe")
	// KUBE-SERVICES: one rule per service, probe in the middle (third of
	// five), then the nodeports rule last.
	var dispatch []string
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "-A KUBE-SERVICES ") && strings.Contains(line, "cluster IP") {
			dispatch = append(dispatch, line)
		}
	}
	if len(dispatch) != 5 {
		t.Fatalf("%d KUBE-SERVICES service rules, want 5", len(dispatch))
	}
	m := regexp.MustCompile(`^-A KUBE-SERVICES -m comment --comment "bench/probe:p80 cluster IP" -m tcp -p tcp -d ` +
		regexp.QuoteMeta(p.Addr.String()) + ` --dport 80 -j (KUBE-SVC-[A-Z2-7]{16})$`).FindStringSubmatch(dispatch[2])
	if m == nil {
		t.Fatalf("third KUBE-SERVICES rule is not probe's: %s", dispatch[2])
	}
	svc := m[1]
	// Probabilities 1/3, 1/2, then the last endpoint unconditionally.
	re := regexp.MustCompile(`(?m)^-A ` + svc + ` -m comment --comment "bench/probe:p80 -> [0-9.:]+"(?: -m statistic --mode random --probability ([0-9.]+))? -j (KUBE-SEP-[A-Z2-7]{16})$`)
	jumps := re.FindAllStringSubmatch(text, -1)
	if len(jumps) != 3 {
		t.Fatalf("%d endpoint jumps in %s, want 3:\n%s", len(jumps), svc, text)
	}
	for i, want := range []string{"0.3333333333", "0.5000000000", ""} {
		if jumps[i][1] != want {
			t.Errorf("jump %d probability %q, want %q", i, jumps[i][1], want)
		}
	}
	sep := jumps[0][2]
	for _, want := range []string{
		":" + sep + " - [0:0]\n",
		"-A " + sep + " -m comment --comment bench/probe:p80 -s 198.19.0.11 -j KUBE-MARK-MASQ\n",
		"-A " + sep + " -m comment --comment bench/probe:p80 -m tcp -p tcp -j DNAT --to-destination 198.19.0.11:8080\n",
		"-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
		"-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\nCOMMIT\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("missing %q", want)
		}
	}
}

func TestKubeIPTablesLargeCluster(t *testing.T) {
	// 101 services x 10 endpoints > 1000: per-endpoint rules lose comments.
	st := testState(t, 101, 10, 10)
	var b bytes.Buffer
	if err := testKube.WriteKubeIPTables(&b, st.VIPs); err != nil {
		t.Fatal(err)
	}
	text := b.String()
	if strings.Contains(text, " -> ") {
		t.Error("large cluster: endpoint jumps still carry comments")
	}
	if regexp.MustCompile(`(?m)^-A KUBE-SEP-\S+ -m comment`).MatchString(text) {
		t.Error("large cluster: endpoint chains still carry comments")
	}
	if !strings.Contains(text, `"bench/probe:p80 cluster IP"`) {
		t.Error("service rules lost their comments")
	}
}

func TestNoEndpoints(t *testing.T) {
	st := testState(t, 1, 0, 0)
	var nft, ipt bytes.Buffer
	if err := testKube.WriteKubeNFT(&nft, st.VIPs); err != nil {
		t.Fatal(err)
	}
	if err := testKube.WriteKubeIPTables(&ipt, st.VIPs); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(nft.String(), `comment "bench/probe:p80" : goto reject-chain }`) {
		t.Errorf("nft: no reject element for a service without endpoints:\n%s", nft.String())
	}
	if !strings.Contains(ipt.String(), `has no endpoints" -m tcp -p tcp -d `) || strings.Contains(ipt.String(), "KUBE-SVC-") {
		t.Errorf("iptables: want a REJECT rule and no service chain:\n%s", ipt.String())
	}
}
