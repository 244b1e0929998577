package nat

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/l4lb/l4lb/internal/netns"
)

// kernelFor returns a Kernel programming the namespace ns.
func kernelFor(t testing.TB, ns *netns.NS, opts ...Option) *Kernel {
	t.Helper()
	f, err := ns.Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	k, err := New(DefaultTable, append([]Option{WithNetNS(int(f.Fd()))}, opts...)...)
	if err != nil {
		t.Fatalf("nat.New: %v", err)
	}
	t.Cleanup(func() { k.Close() })
	return k
}

// listJSON returns `nft -j list table inet l4lb` with handles dropped and
// set elements sorted, so that two tables with the same content compare
// equal whatever order their hash sets list in.
func listJSON(t *testing.T, ns *netns.NS) string {
	t.Helper()
	out, err := ns.Run("nft", "-j", "list", "table", "inet", DefaultTable)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatal(err)
	}
	items, _ := doc["nftables"].([]any)
	var lines []string
	for _, it := range items {
		m, _ := it.(map[string]any)
		if _, ok := m["metainfo"]; ok {
			continue
		}
		for _, v := range m {
			obj, _ := v.(map[string]any)
			delete(obj, "handle")
			if elems, ok := obj["elem"].([]any); ok {
				var es []string
				for _, e := range elems {
					b, _ := json.Marshal(e)
					es = append(es, string(b))
				}
				slices.Sort(es)
				obj["elem"] = es
			}
		}
		b, _ := json.Marshal(m)
		lines = append(lines, string(b))
	}
	return strings.Join(lines, "\n")
}

// listText returns `nft list table inet l4lb` with the elements of each set
// one per line and sorted.
func listText(t *testing.T, ns *netns.NS) string {
	t.Helper()
	out, err := ns.Run("nft", "list", "table", "inet", DefaultTable)
	if err != nil {
		if strings.Contains(err.Error(), "No such file or directory") {
			return "(no table)"
		}
		t.Fatal(err)
	}
	var b strings.Builder
	var elems []string
	inElems := false
	for _, line := range strings.Split(out, "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "elements = { ") {
			inElems = true
			trimmed = strings.TrimPrefix(trimmed, "elements = { ")
		}
		if !inElems {
			b.WriteString(line + "\n")
			continue
		}
		end := strings.HasSuffix(trimmed, " }")
		trimmed = strings.TrimSuffix(strings.TrimSuffix(trimmed, " }"), ",")
		elems = append(elems, trimmed)
		if end {
			slices.Sort(elems)
			b.WriteString("\t\telements = {\n\t\t\t" + strings.Join(elems, ",\n\t\t\t") + "\n\t\t}\n")
			elems, inElems = nil, false
		}
	}
	return b.String()
}

// TestKernelMatchesNft programs each golden ruleset over netlink into one
// namespace and loads its text with nft -f into another: what nft lists
// back must be the same, so the text render prints is exactly what the
// kernel gets, and `nft list ruleset` can be read and reloaded.
func TestKernelMatchesNft(t *testing.T) {
	for _, in := range goldenInputs(t) {
		t.Run(filepath.Base(in), func(t *testing.T) {
			viaNetlink := netns.ForTest(t, "l4kn", "nft")
			viaNft := netns.ForTest(t, "l4kf", "nft")
			r := Compile(stateFromFile(t, in), "")
			k := kernelFor(t, viaNetlink, WithoutRoutes())
			res, err := k.Apply(context.Background(), r, false)
			if err != nil {
				t.Fatalf("Apply: %v", err)
			}
			if !res.Rebuilt || res.Batches == 0 {
				t.Errorf("cold Apply = %+v, want a rebuild", res)
			}
			if _, err := viaNft.RunStdin([]byte(r.Text()), "nft", "-f", "-"); err != nil {
				t.Fatal(err)
			}
			if got, want := listText(t, viaNetlink), listText(t, viaNft); got != want {
				t.Errorf("nft list differs:\n%s", diffLines(want, got))
			}
			if got, want := listJSON(t, viaNetlink), listJSON(t, viaNft); got != want {
				t.Errorf("nft -j list differs:\n%s", diffLines(want, got))
			}
			// What nft lists reloads: the audit output is valid nft input.
			listed, err := viaNetlink.Run("nft", "list", "ruleset")
			if err != nil {
				t.Fatal(err)
			}
			reload := netns.ForTest(t, "l4kr", "nft")
			if _, err := reload.RunStdin([]byte(listed), "nft", "-f", "-"); err != nil {
				t.Errorf("nft list ruleset does not reload: %v", err)
			}
			// Reading the table back finds nothing to change.
			res, err = k.Apply(context.Background(), r, true)
			if err != nil {
				t.Fatalf("second Apply: %v", err)
			}
			if res.Changed() || !res.ReadBack {
				t.Errorf("Apply of the same ruleset after read-back = %+v, want no change", res)
			}
			// So does a second kernel adopting the table (a restart).
			k2 := kernelFor(t, viaNetlink, WithoutRoutes())
			if res, err := k2.Apply(context.Background(), r, false); err != nil || res.Changed() {
				t.Errorf("restart adopting the table: %+v, %v; want no change", res, err)
			}
			// And a kernel adopting the table nft built from the text: the
			// sets (with their userdata) and the rules' expressions are
			// exactly what nft generates.
			k3 := kernelFor(t, viaNft, WithoutRoutes())
			if res, err := k3.Apply(context.Background(), r, false); err != nil || res.Changed() {
				t.Errorf("adopting the table nft -f built: %+v, %v; want no change", res, err)
			}
		})
	}
}

func TestMain(m *testing.M) {
	os.Exit(m.Run())
}

// TestLargeLoadInManyBatches cuts a cold load into many small batches and
// checks that the result is the same table nft -f builds from the text.
func TestLargeLoadInManyBatches(t *testing.T) {
	viaNetlink := netns.ForTest(t, "l4kb", "nft")
	viaNft := netns.ForTest(t, "l4kt", "nft")
	r := syntheticRuleset(3000, 4)
	k := kernelFor(t, viaNetlink, WithoutRoutes(), WithMaxBatchBytes(64<<10))
	res, err := k.Apply(context.Background(), r, false)
	if err != nil {
		t.Fatal(err)
	}
	if res.Batches < 10 {
		t.Errorf("%d batches for 15,000 elements in 64 KiB batches", res.Batches)
	}
	if _, err := viaNft.RunStdin([]byte(r.Text()), "nft", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	if got, want := listJSON(t, viaNetlink), listJSON(t, viaNft); got != want {
		t.Errorf("many batches give another table:\n%s", diffLines(want, got))
	}
	if res, err := k.Apply(context.Background(), r, true); err != nil || res.Changed() {
		t.Errorf("read back after a batched load: %+v %v", res, err)
	}
}

// TestErrorNamesTheMessage makes the kernel refuse a batch: the error says
// which operation failed, and the next Apply reads the table back.
func TestErrorNamesTheMessage(t *testing.T) {
	ns := netns.ForTest(t, "l4ke", "nft")
	k := kernelFor(t, ns, WithoutRoutes())
	r := syntheticRuleset(3, 1)
	if _, err := k.Apply(context.Background(), r, false); err != nil {
		t.Fatal(err)
	}
	bad := syntheticRuleset(3, 1)
	bad.VIPs[1].Comment = strings.Repeat("x", 300) // the kernel keeps at most 256 bytes of userdata
	bad.Sort()
	_, err := k.Apply(context.Background(), bad, false)
	if err == nil || !strings.Contains(err.Error(), "elements of vips4") {
		t.Fatalf("Apply of a refused batch: %v; want an error naming the vips4 elements", err)
	}
	res, err := k.Apply(context.Background(), r, false)
	if err != nil || !res.ReadBack {
		t.Errorf("after a failure: %+v %v; want a read-back", res, err)
	}
}
