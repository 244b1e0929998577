package forward

import (
	"os"
	"testing"
)

// TestBinaryFor: the -nft and -legacy binaries are preferred; a plain
// iptables serves the mode its --version names (no mode: legacy).
func TestBinaryFor(t *testing.T) {
	dir := t.TempDir()
	script := func(name, version string) string {
		p := dir + "/" + name
		if err := os.WriteFile(p, []byte("#!/bin/sh\necho '"+version+"'\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	t.Setenv("PATH", dir)
	k := New()
	for _, c := range []struct {
		version     string
		nft, legacy bool
	}{
		{"iptables v1.8.9 (nf_tables)", true, false},
		{"iptables v1.8.9 (legacy)", false, true},
		{"iptables v1.6.1", false, true},
	} {
		k.versions = nil
		plain := script("iptables", c.version)
		for _, legacy := range []bool{false, true} {
			got, err := k.binaryFor(false, legacy)
			want := ""
			if legacy && c.legacy || !legacy && c.nft {
				want = plain
			}
			if err != nil || got != want {
				t.Errorf("%q, legacy %v: %q, %v; want %q", c.version, legacy, got, err, want)
			}
		}
	}
	nft := script("iptables-nft", "iptables v1.8.9 (nf_tables)")
	if got, _ := k.binaryFor(false, false); got != nft {
		t.Errorf("with iptables-nft: %q", got)
	}
	if got, _ := k.binaryFor(true, false); got != "" {
		t.Errorf("no ip6tables: %q", got)
	}
}
