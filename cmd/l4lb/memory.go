package main

import (
	"log/slog"
	"os"
	"runtime/debug"
	"sync"
)

// steadyGCPercent is the collector's target once the first full list is in:
// the daemon's heap is then mostly long-lived state (declarations, VIPs,
// the compiled ruleset), and a change makes tens of kilobytes of garbage, so
// collecting at 25% over the live heap costs a cycle every few hundred
// changes and keeps the resident set near the state's size. Before it, the
// start's list and compile run at Go's default, which they would otherwise
// spend collecting.
const steadyGCPercent = 25

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
