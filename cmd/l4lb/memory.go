package main

import (
	"log/slog"
	"os"
	"runtime/debug"
	"sync"
)

// steadyGCPercent is the collector's target once the first full list is in:
// the daemon's heap is then mostly long-lived state (declarations, VIPs,
// the compiled ruleset: about 130 MB at 50,000 VIPs x 10 backends), and a
// change makes a few hundred kilobytes of garbage at most (most of it the
// conntrack flows listed for a backend that lost its place), so collecting
// at 50% over the live heap costs a cycle (about 0.3 s of CPU at 50,000)
// every couple of hundred changes and keeps the resident set within about
// twice the state's size. (At 25%, the cycles and the scavenger's returns
// cost 4 to 5 ms of CPU per change at 50,000.) Before it, the start's list
// and compile run at Go's default, which they would otherwise spend
// collecting.
const steadyGCPercent = 50

// memorySettler returns the hook run after every sync that took a full
// list: it returns the list's garbage to the OS and, the first time, sets
// the steady collector target, unless GOGC says otherwise.
func memorySettler(log *slog.Logger) func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			if os.Getenv("GOGC") != "" {
				return
			}
			debug.SetGCPercent(steadyGCPercent)
			log.Debug("collector target set", "gcPercent", steadyGCPercent)
		})
		debug.FreeOSMemory()
	}
}
