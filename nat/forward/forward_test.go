package forward

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/l4lb/l4lb/nat"
	"github.com/l4lb/l4lb/vip"
)

func specs(rs []rule) []string {
	var out []string
	for _, r := range rs {
		out = append(out, specLine(Chain, r.spec()))
	}
	return out
}

func TestWantRules(t *testing.T) {
	w := Want{
		Pool4: netip.MustParsePrefix("198.18.0.7/16"), // not masked: the rule is
		Pool6: netip.MustParsePrefix("fd00:198:18::/64"),
		IPVIPs: []netip.Addr{
			netip.MustParseAddr("198.18.255.10"),     // inside the pool
			netip.MustParseAddr("198.19.9.2"),        // outside
			netip.MustParseAddr("198.19.9.1"),        // outside, sorts first
			netip.MustParseAddr("198.19.9.2"),        // duplicate
			netip.MustParseAddr("::ffff:198.19.9.3"), // IPv4-mapped: IPv4
			netip.MustParseAddr("fd00:198:18::5"),    // inside the IPv6 pool
			netip.MustParseAddr("fd00:198:17::5"),
			{},
		},
	}
	want4 := []string{
		`-A L4LB-FORWARD -m conntrack --ctstate DNAT --ctorigdst 198.18.0.0/16 -m comment --comment "l4lb: VIP pool" -j ACCEPT`,
		`-A L4LB-FORWARD -m conntrack --ctstate DNAT --ctorigdst 198.19.9.1 -m comment --comment "l4lb: IP VIP" -j ACCEPT`,
		`-A L4LB-FORWARD -m conntrack --ctstate DNAT --ctorigdst 198.19.9.2 -m comment --comment "l4lb: IP VIP" -j ACCEPT`,
		`-A L4LB-FORWARD -m conntrack --ctstate DNAT --ctorigdst 198.19.9.3 -m comment --comment "l4lb: IP VIP" -j ACCEPT`,
	}
	want6 := []string{
		`-A L4LB-FORWARD -m conntrack --ctstate DNAT --ctorigdst fd00:198:18::/64 -m comment --comment "l4lb: VIP pool" -j ACCEPT`,
		`-A L4LB-FORWARD -m conntrack --ctstate DNAT --ctorigdst fd00:198:17::5 -m comment --comment "l4lb: IP VIP" -j ACCEPT`,
	}
	if got := specs(w.rules(false)); !slices.Equal(got, want4) {
		t.Errorf("IPv4:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want4, "\n"))
	}
	if got := specs(w.rules(true)); !slices.Equal(got, want6) {
		t.Errorf("IPv6:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want6, "\n"))
	}

	// Without pools only the IP VIPs remain; with nothing, nothing.
	onlyIP := Want{IPVIPs: []netip.Addr{netip.MustParseAddr("198.19.9.1")}}
	if got := onlyIP.rules(false); len(got) != 1 || got[0].comment != commentIPVIP {
		t.Errorf("IP VIP without pool: %v", specs(got))
	}
	if got := onlyIP.rules(true); len(got) != 0 {
		t.Errorf("no IPv6 at all: %v", specs(got))
	}
	// A pool of the wrong family is ignored rather than misfiled.
	if got := (Want{Pool6: netip.MustParsePrefix("198.18.0.0/16")}).rules(true); len(got) != 0 {
		t.Errorf("IPv4 prefix as IPv6 pool: %v", specs(got))
	}
}

func TestWantFor(t *testing.T) {
	s := vip.State{
		Pool4: netip.MustParsePrefix("198.18.0.0/16"),
		Pool6: netip.MustParsePrefix("fd00:198:18::/64"),
		VIPs: []vip.VIP{
			{Addr: netip.MustParseAddr("198.19.7.7"), Port: 80, Proto: vip.TCP},
			{Name: "web.marathon.l4lb.thisdcos.directory", Addr: netip.MustParseAddr("198.18.0.9"), Port: 80, Proto: vip.TCP},
		},
	}
	w := WantFor(nat.Compile(s, ""))
	if w.Pool4 != s.Pool4 || w.Pool6 != s.Pool6 || !slices.Equal(w.IPVIPs, []netip.Addr{netip.MustParseAddr("198.19.7.7")}) {
		t.Errorf("WantFor = %+v", w)
	}
	if w := WantFor(nil); w.Pool4.IsValid() || len(w.IPVIPs) > 0 {
		t.Errorf("WantFor(nil) = %+v", w)
	}
}

// Lines as iptables 1.8.9 prints them, nft and legacy alike.
const listed = `# Warning: iptables-legacy tables present, use iptables-legacy to see them
-P FORWARD DROP
-A FORWARD -m comment --comment "l4lb: accept connections to VIPs that l4lb DNATed" -j L4LB-FORWARD
-A FORWARD -j DOCKER-USER
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
-A L4LB-FORWARD -m conntrack --ctstate DNAT --ctorigdst 198.18.0.0/16 -m comment --comment "l4lb: VIP pool" -j ACCEPT
-A FORWARD -m comment --comment "l4lb: \"x\" \\y \'z\'" -j REJECT --reject-with icmp-host-prohibited
`

func TestParseList(t *testing.T) {
	d, err := parseList("FORWARD", strings.Split(listed, "\n"))
	if err != nil {
		t.Fatal(err)
	}
	if d.policy != "DROP" || len(d.rules) != 4 {
		t.Fatalf("policy %q, %d rules: %q", d.policy, len(d.rules), d.rules)
	}
	if !slices.Equal(d.rules[0], jumpSpec()) {
		t.Errorf("jump: %q", d.rules[0])
	}
	if !slices.Equal(d.rules[2], []string{"-i", "docker0", "!", "-o", "docker0", "-j", "ACCEPT"}) {
		t.Errorf("docker rule: %q", d.rules[2])
	}
	if got := comment(d.rules[3]); got != `l4lb: "x" \y 'z'` {
		t.Errorf("escaped comment: %q", got)
	}
	// Printing the parsed rules gives the lines back.
	for i, line := range strings.Split(listed, "\n")[2:] {
		if line == "" || strings.HasPrefix(line, "-A L4LB") {
			continue
		}
		if got := specLine("FORWARD", d.rules[min(i, 3)]); got != line {
			t.Errorf("round trip:\n%s\nwant\n%s", got, line)
		}
	}
	u, err := parseList(Chain, []string{"-N L4LB-FORWARD", strings.Split(listed, "\n")[5]})
	if err != nil || u.policy != "" || len(u.rules) != 1 {
		t.Errorf("user chain: %+v, %v", u, err)
	}
	for _, bad := range []string{`-A FORWARD -m comment --comment "open`, `-A FORWARD --comment "a"b`, `-P FORWARD`} {
		if _, err := parseList("FORWARD", []string{bad}); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestQuoteRoundTrip(t *testing.T) {
	for _, s := range []string{"plain", "with space", `q"uote`, `back\slash`, "it's", "", "a:b", "ünï"} {
		got, err := tokenize("x " + quote(s) + " y")
		if err != nil || len(got) != 3 || got[1] != s {
			t.Errorf("%q: quoted %s, tokenized %q, %v", s, quote(s), got, err)
		}
	}
}

func TestBlocks(t *testing.T) {
	for _, c := range []struct {
		name  string
		lines []string
		want  bool
	}{
		{"policy drop", []string{"-P FORWARD DROP"}, true},
		{"policy drop with rules", []string{"-P FORWARD DROP", "-A FORWARD -i docker0 -j ACCEPT"}, true},
		{"policy accept", []string{"-P FORWARD ACCEPT"}, false},
		{"no table (nothing listed)", nil, false},
		{"policy accept, conditional rules", []string{"-P FORWARD ACCEPT", "-A FORWARD -i eth9 -j DROP"}, false},
		{"firewalld's last reject", []string{"-P FORWARD ACCEPT", "-A FORWARD -m conntrack --ctstate INVALID -j DROP",
			"-A FORWARD -j REJECT --reject-with icmp-host-prohibited"}, true},
		{"last plain reject", []string{"-P FORWARD ACCEPT", "-A FORWARD -j REJECT"}, true},
		{"last drop with comment", []string{"-P FORWARD ACCEPT", `-A FORWARD -m comment --comment "deny all" -j DROP`}, true},
		{"reject not last", []string{"-P FORWARD ACCEPT", "-A FORWARD -j REJECT", "-A FORWARD -i eth0 -j ACCEPT"}, false},
		{"l4lb's jump last after a reject", []string{"-P FORWARD ACCEPT", "-A FORWARD -j REJECT",
			`-A FORWARD -m comment --comment "l4lb: accept connections to VIPs that l4lb DNATed" -j L4LB-FORWARD`}, true},
		{"last drop with a match", []string{"-P FORWARD ACCEPT", "-A FORWARD -p tcp -j DROP"}, false},
		{"last jump to a chain", []string{"-P FORWARD ACCEPT", "-A FORWARD -j ufw-reject-forward"}, false},
	} {
		d, err := parseList("FORWARD", c.lines)
		if err != nil {
			t.Fatal(err)
		}
		if got := blocks(d); got != c.want {
			t.Errorf("%s: blocks = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestDiffRules(t *testing.T) {
	want := Want{Pool4: netip.MustParsePrefix("198.18.0.0/16"),
		IPVIPs: []netip.Addr{netip.MustParseAddr("198.19.9.1"), netip.MustParseAddr("198.19.9.2")}}.rules(false)
	parse := func(lines ...string) [][]string {
		d, err := parseList(Chain, lines)
		if err != nil {
			t.Fatal(err)
		}
		return d.rules
	}
	have := parse(
		// the pool, written with /16: kept
		`-A L4LB-FORWARD -m conntrack --ctstate DNAT --ctorigdst 198.18.0.0/16 -m comment --comment "l4lb: VIP pool" -j ACCEPT`,
		// an IP VIP as /32, as some versions print it: kept
		`-A L4LB-FORWARD -m conntrack --ctstate DNAT --ctorigdst 198.19.9.1/32 -m comment --comment "l4lb: IP VIP" -j ACCEPT`,
		// the same again: deleted
		`-A L4LB-FORWARD -m conntrack --ctstate DNAT --ctorigdst 198.19.9.1 -m comment --comment "l4lb: IP VIP" -j ACCEPT`,
		// an IP VIP that is gone: deleted
		`-A L4LB-FORWARD -m conntrack --ctstate DNAT --ctorigdst 198.19.9.7 -m comment --comment "l4lb: IP VIP" -j ACCEPT`,
		// a rule someone added to l4lb's chain: deleted
		`-A L4LB-FORWARD -j ACCEPT`,
		// the right shape without a comment: deleted
		`-A L4LB-FORWARD -m conntrack --ctstate DNAT --ctorigdst 198.19.9.2 -j ACCEPT`,
	)
	del, add := diffRules(have, want)
	if len(del) != 4 || !slices.Equal(del[3], []string{"-m", "conntrack", "--ctstate", "DNAT", "--ctorigdst", "198.19.9.2", "-j", "ACCEPT"}) {
		t.Errorf("del = %q", del)
	}
	if len(add) != 1 || add[0].dest != netip.MustParsePrefix("198.19.9.2/32") {
		t.Errorf("add = %v", specs(add))
	}
	if del, add := diffRules(parse(specs(want)...), want); len(del)+len(add) != 0 {
		t.Errorf("in sync: del %q add %v", del, specs(add))
	}
}
