package nat

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/l4lb/l4lb/internal/netns"
	"github.com/l4lb/l4lb/vip"
)

var update = flag.Bool("update", false, "rewrite the golden files")

var (
	testPool4 = netip.MustParsePrefix("198.18.0.0/16")
	testPool6 = netip.MustParsePrefix("fd00:198:18::/64")
)

func stateFromFile(t *testing.T, path string) vip.State {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	apps, problems, err := vip.ParseApps(data)
	if err != nil || len(problems) > 0 {
		t.Fatalf("%s: %v %v", path, err, problems)
	}
	s, problems := vip.Desired(apps, vip.Config{Pool4: testPool4, Pool6: testPool6})
	if len(problems) > 0 {
		t.Fatalf("%s: problems %v", path, problems)
	}
	return s
}

func goldenInputs(t *testing.T) []string {
	inputs, err := filepath.Glob("testdata/*.json")
	if err != nil || len(inputs) == 0 {
		t.Fatalf("no golden inputs: %v", err)
	}
	return inputs
}

// TestCompileGolden compares the text of each testdata input with its golden
// file. Run with -update to rewrite them after a deliberate change.
func TestCompileGolden(t *testing.T) {
	for _, in := range goldenInputs(t) {
		t.Run(filepath.Base(in), func(t *testing.T) {
			got := Compile(stateFromFile(t, in), "").Text()
			golden := strings.TrimSuffix(in, ".json") + ".nft"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./nat -run Golden -update)", err)
			}
			if got != string(want) {
				t.Errorf("ruleset differs from %s (run with -update if intended):\n%s", golden, diffLines(string(want), got))
			}
		})
	}
}

func diffLines(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for i := 0; i < max(len(w), len(g)); i++ {
		var a, c string
		if i < len(w) {
			a = w[i]
		}
		if i < len(g) {
			c = g[i]
		}
		if a != c {
			b.WriteString("- " + a + "\n+ " + c + "\n")
		}
	}
	return b.String()
}

func TestCompileShape(t *testing.T) {
	r := Compile(stateFromFile(t, "testdata/mixed.json"), "")
	byComment := map[string]VIPElem{}
	for _, v := range r.VIPs {
		name, _, _ := strings.Cut(v.Comment, " ")
		byComment[name] = v
	}
	for name, n := range map[string]int{
		// a, b healthy; c unhealthy and d draining get no slot.
		"myservice.marathon.l4lb.thisdcos.directory:6666/tcp": 2,
		"myservice.marathon.l4lb.thisdcos.directory:6666/udp": 2,
		"myservice.marathon.l4lb.thisdcos.directory:7777/tcp": 2,
		"198.18.255.1:80/tcp":                           2,
		"six.marathon.l4lb.thisdcos.directory:80/tcp":   3,
		"[fd00:198:18::ff:1]:8080/tcp":                  3,
		"empty.marathon.l4lb.thisdcos.directory:1/tcp":  0,
		"long.marathon.l4lb.thisdcos.directory:443/tcp": 0,
	} {
		v, ok := byComment[name]
		if !ok {
			t.Errorf("no element for %s", name)
			continue
		}
		if len(v.Backends) != n {
			t.Errorf("%s: %d backends, want %d", name, len(v.Backends), n)
		}

	}
	if got := r.LBCounts(); !slices.Equal(got, standingPlus()) {
		t.Errorf("LBCounts = %v, want the standing counts", got)
	}
	// Slots SlotBase(N)..SlotBase(N)+N-1 (1 and 2 for two) in address
	// order, only active backends.
	var slots []string
	for _, b := range r.Backends() {
		if b.VIP.Port == 6666 && b.VIP.Proto == vip.TCP {
			slots = append(slots, fmt.Sprintf("%d=%s", b.Slot, b.Backend))
		}
	}
	if want := []string{"1=198.19.0.11:31000", "2=198.19.0.12:31000"}; !slices.Equal(slots, want) {
		t.Errorf("slots of 6666/tcp = %v, want %v", slots, want)
	}
	wantHairpin := []netip.Addr{netip.MustParseAddr("198.19.0.11"), netip.MustParseAddr("198.19.0.12"),
		netip.MustParseAddr("fd00:198:19::1:21"), netip.MustParseAddr("fd00:198:19::1:22"), netip.MustParseAddr("fd00:198:19::1:23")}
	if !slices.Equal(r.Hairpin, wantHairpin) {
		t.Errorf("hairpin = %v, want %v", r.Hairpin, wantHairpin)
	}
	if want := []netip.Addr{netip.MustParseAddr("198.18.255.1"), netip.MustParseAddr("fd00:198:18::ff:1")}; !slices.Equal(r.IPVIPs, want) {
		t.Errorf("IP VIPs = %v, want %v", r.IPVIPs, want)
	}
	long := byComment["long.marathon.l4lb.thisdcos.directory:443/tcp"].Comment
	if len(long) != MaxComment || !strings.HasPrefix(long, "long.marathon.l4lb.thisdcos.directory:443/tcp /group/a-very-long") {
		t.Errorf("long comment %q (%d bytes): want the name first, cut at %d", long, len(long), MaxComment)
	}
}

func TestCommentTruncation(t *testing.T) {
	v := vip.VIP{Name: strings.Repeat("n", 130), Addr: netip.MustParseAddr("198.18.0.1"), Port: 1, Proto: vip.TCP, Apps: []string{"/x"}}
	if c := Comment(v); len(c) != MaxComment || !strings.HasPrefix(c, "nnn") {
		t.Errorf("comment %q", c)
	}
	if got := truncate("aé", 2); got != "a" {
		t.Errorf("truncate split a rune: %q", got)
	}
}

// TestGoldenLoadsWithNft loads every golden file with nft -f into a fresh
// namespace: the text is valid nftables, and what nft lists back carries
// every audit comment.
func TestGoldenLoadsWithNft(t *testing.T) {
	for _, in := range goldenInputs(t) {
		t.Run(filepath.Base(in), func(t *testing.T) {
			ns := netns.ForTest(t, "l4gl", "nft")
			golden := strings.TrimSuffix(in, ".json") + ".nft"
			text, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := ns.RunStdin(text, "nft", "-f", "-"); err != nil {
				t.Fatalf("nft -f %s: %v", golden, err)
			}
			listed, err := ns.Run("nft", "list", "table", "inet", DefaultTable)
			if err != nil {
				t.Fatal(err)
			}
			r := Compile(stateFromFile(t, in), "")
			for _, v := range r.VIPs {
				if !strings.Contains(listed, `comment "`+v.Comment+`"`) {
					t.Errorf("nft list lacks the comment %q", v.Comment)
				}
			}
		})
	}
}
