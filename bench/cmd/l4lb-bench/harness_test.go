package main

import (
	"testing"
	"time"
)

func TestCountConntrack(t *testing.T) {
	out := `tcp      6 431998 ESTABLISHED src=198.19.1.11 dst=198.18.117.211 sport=32410 dport=80 src=198.19.0.11 dst=198.19.1.11 sport=8080 dport=32410 [ASSURED] mark=0 use=1
tcp      6 0 TIME_WAIT src=198.19.1.11 dst=198.18.117.211 sport=55704 dport=80 src=198.19.0.11 dst=198.19.1.11 sport=8080 dport=55704 [ASSURED] mark=0 use=1
tcp      6 1 TIME_WAIT src=198.19.1.11 dst=198.18.117.211 sport=55705 dport=80 src=198.19.0.11 dst=198.19.1.11 sport=8080 dport=55705 [ASSURED] mark=0 use=1
`
	live, est := countConntrack(out)
	if live != 2 || est != 1 {
		t.Errorf("live %d established %d, want 2 and 1", live, est)
	}
	if live, est := countConntrack(""); live != 0 || est != 0 {
		t.Errorf("empty: %d %d", live, est)
	}
}

func TestLineBuffer(t *testing.T) {
	l := newLineBuffer()
	early := l.wait("held")
	l.Write([]byte("noise\nhe"))
	select {
	case <-early:
		t.Fatal("a partial line matched")
	default:
	}
	l.Write([]byte("ld\nmore"))
	select {
	case <-early:
	case <-time.After(time.Second):
		t.Fatal("the completed line did not match")
	}
	select {
	case <-l.wait("held"):
	default:
		t.Error("waiting for a line already written blocks")
	}
}

func TestProjection(t *testing.T) {
	h := &harness{cfg: &config{loadBudget: 100 * time.Second}, loads: map[string][]loadSample{}, stopped: map[string]stopMark{}}
	if why := h.skipReason("x", 50000); why != "" {
		t.Errorf("no history: %q", why)
	}
	// Overhead-sized loads say nothing.
	h.loads["x"] = []loadSample{{1, 0.01}}
	if why := h.skipReason("x", 50000); why != "" {
		t.Errorf("overhead only: %q", why)
	}
	// Quadratic: 1 s at 1000, 4 s at 2000 -> 100 s at 10000 (at the budget), 2500 s at 50000.
	h.loads["x"] = []loadSample{{2000, 4}, {1000, 1}}
	if why := h.skipReason("x", 5000); why != "" {
		t.Errorf("25 s projected: %q", why)
	}
	if why := h.skipReason("x", 50000); why == "" {
		t.Error("2500 s projected, not skipped")
	}
	h.stopped["x"] = stopMark{5000, "ran out of time"}
	if why := h.skipReason("x", 5000); why != "ran out of time" {
		t.Errorf("stopped: %q", why)
	}
	if why := h.skipReason("x", 2000); why != "" {
		t.Errorf("smaller than the stopped size: %q", why)
	}
}

func TestParseSizes(t *testing.T) {
	s, err := parseSizes("1, 1000,50000")
	if err != nil || len(s) != 3 || s[2] != 50000 {
		t.Errorf("%v %v", s, err)
	}
	for _, bad := range []string{"", "0", "x", "1,,2"} {
		if _, err := parseSizes(bad); err == nil {
			t.Errorf("parseSizes(%q) accepted", bad)
		}
	}
}
