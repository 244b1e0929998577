package netns

import (
	"os"
	"os/exec"
	"testing"
)

// InCI reports whether the tests run in CI (CI=true), where a test that
// needs namespaces must fail rather than skip.
func InCI() bool { return os.Getenv("CI") == "true" }

// Require stops the test unless it can create network namespaces and run the
// named tools: it skips on a developer machine without root, and fails in CI.
func Require(t testing.TB, tools ...string) {
	t.Helper()
	miss := func(format string, args ...any) {
		t.Helper()
		if InCI() {
			t.Fatalf("CI=true and this test needs namespaces: "+format, args...)
		}
		t.Skipf("needs root and network namespaces: "+format, args...)
	}
	if os.Geteuid() != 0 {
		miss("not root")
	}
	for _, tool := range append([]string{"ip"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			miss("%s not installed (run `make deps`)", tool)
		}
	}
}

// ForTest creates a namespace for t, with a unique name built from prefix,
// and deletes it when the test ends, whether it passed or not.
func ForTest(t testing.TB, prefix string, tools ...string) *NS {
	t.Helper()
	Require(t, tools...)
	n, err := New(UniqueName(prefix))
	if err != nil {
		if InCI() {
			t.Fatalf("create netns: %v", err)
		}
		t.Skipf("cannot create a network namespace here: %v", err)
	}
	t.Cleanup(func() {
		if err := n.Delete(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return n
}
