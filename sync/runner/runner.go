// Package runner runs one function, such as a sync of the desired state
// into the kernel, on demand, at a bounded rate, periodically, and again
// after failures: the idea of kube-proxy's BoundedFrequencyRunner.
//
// Triggers coalesce: however many arrive while a run is in progress or
// within MinInterval of the last run's start, they cause exactly one more
// run. A failed run is retried after an exponential backoff, during which
// triggers wait for the retry; a successful run resets the backoff. Resync
// runs the function when nothing else did for that long (and, with
// ResyncMax, at the latest that long after the last resync). Runs never overlap:
// they all happen on the goroutine that calls Run.
package runner

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"time"
)

// Defaults of Options.
const (
	DefaultBackoffMin = time.Second
	DefaultBackoffMax = 30 * time.Second
)

// Options configure a Runner.
type Options struct {
	// MinInterval is the least time between the starts of two runs. Zero
	// lets a trigger start a run as soon as the previous one ended.
	MinInterval time.Duration
	// Resync runs the function when this long has passed since the end of
	// the last run. Zero turns periodic runs off.
	Resync time.Duration
	// BackoffMin and BackoffMax bound the delay before retrying a failed run
	// (after its end): BackoffMin after the first failure, doubling after
	// each further one up to BackoffMax. Zero means DefaultBackoffMin and
	// DefaultBackoffMax.
	BackoffMin, BackoffMax time.Duration
	// ResyncEvery makes the resync period count from the last run that was
	// a resync (or the initial run, or a retry) instead of from any run, so
	// that resyncs stay periodic under a constant stream of triggers (for a
	// function whose triggered runs are partial and whose resyncs are
	// full); and a resync alone does not delay the next triggered run by
	// MinInterval.
	ResyncEvery bool
	// ResyncMax, without ResyncEvery, bounds how long a constant stream of
	// triggers may postpone the resync: a run that starts when this long
	// has passed since the end of the last resync (or the initial run, or
	// a retry) is a resync too. Zero: triggers postpone it indefinitely.
	ResyncMax time.Duration
	// Jitter, between 0 and 1, shortens every retry delay and resync period
	// by a random fraction of up to Jitter, so that agents that failed
	// together, or started together, do not hit their source in step.
	Jitter float64
}

// Reason says why a run happens. A run may have several reasons.
type Reason uint8

const (
	Initial   Reason = 1 << iota // the first run, when Run starts
	Triggered                    // Trigger was called
	Resync                       // the resync period passed
	Retry                        // the previous run failed
)

// Has reports whether r includes all of x.
func (r Reason) Has(x Reason) bool { return r&x == x }

func (r Reason) String() string {
	var parts []string
	for _, n := range []struct {
		r    Reason
		name string
	}{{Initial, "initial"}, {Triggered, "triggered"}, {Resync, "resync"}, {Retry, "retry"}} {
		if r.Has(n.r) {
			parts = append(parts, n.name)
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, "|")
}

// Runner runs a function as described in the package documentation.
type Runner struct {
	fn      func(ctx context.Context, why Reason) error
	opts    Options
	trigger chan struct{} // capacity 1: a pending trigger
	running atomic.Bool
}

// New returns a runner of fn. fn gets Run's context and the reasons of the
// run; a non-nil error schedules a retry. Options are checked and defaulted:
// negative durations count as zero, BackoffMax is at least BackoffMin, and
// Jitter is clamped to [0, 1].
func New(fn func(ctx context.Context, why Reason) error, opts Options) *Runner {
	opts.MinInterval = max(opts.MinInterval, 0)
	opts.Resync = max(opts.Resync, 0)
	if opts.BackoffMin <= 0 {
		opts.BackoffMin = DefaultBackoffMin
	}
	if opts.BackoffMax <= 0 {
		opts.BackoffMax = max(DefaultBackoffMax, opts.BackoffMin)
	}
	opts.BackoffMax = max(opts.BackoffMax, opts.BackoffMin)
	opts.Jitter = min(max(opts.Jitter, 0), 1)
	return &Runner{fn: fn, opts: opts, trigger: make(chan struct{}, 1)}
}

// Trigger asks for a run. It never blocks; triggers that arrive before the
// run they asked for has started are one. A trigger before Run counts for
// the first run.
func (r *Runner) Trigger() {
	select {
	case r.trigger <- struct{}{}:
	default:
	}
}

// ErrNothingDone, returned by the function, says that the run did nothing
// (it had nothing to work on yet): it counts as a success, but not as a run
// for MinInterval, so that the trigger that brings work starts a run at once.
var ErrNothingDone = errors.New("runner: nothing done")

// ErrRunning is returned by Run when the runner is already running.
var ErrRunning = errors.New("runner: Run is already running")

// Run runs the function, first at once and then as triggers, the resync
// period and retries ask, until ctx is done. A run in progress when ctx is
// done finishes first (fn sees ctx done); no run starts after that. Run
// returns nil then, or ErrRunning if another Run of this runner is active.
func (r *Runner) Run(ctx context.Context) error {
	if !r.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer r.running.Store(false)

	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()

	var (
		pending   = Initial // reasons for the next run
		lastStart time.Time // of the last run; zero before the first
		failing   bool      // the last run failed
		backoff   time.Duration
		retryAt   time.Time
		resyncAt  time.Time
		forceAt   time.Time // ResyncMax: when a run must be a resync
	)
	for {
		// When is the next run due, and why?
		var due time.Time
		var why Reason
		switch {
		case failing:
			due, why = retryAt, Retry
		case pending != 0:
			due = time.Now()
		case r.opts.Resync > 0:
			due, why = resyncAt, Resync
		}
		if !due.IsZero() && !lastStart.IsZero() {
			due = latest(due, lastStart.Add(r.opts.MinInterval))
		}

		if wait := time.Until(due); due.IsZero() || wait > 0 {
			var fire <-chan time.Time
			if !due.IsZero() {
				timer.Reset(wait)
				fire = timer.C
			}
			select {
			case <-ctx.Done():
				return nil
			case <-r.trigger:
				pending |= Triggered
				timer.Stop()
				continue // recompute: the trigger may make the run due sooner
			case <-fire:
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		// Triggers that arrived until now are served by this run.
		select {
		case <-r.trigger:
			pending |= Triggered
		default:
		}
		reason := pending | why
		pending = 0
		if r.opts.Resync > 0 && r.opts.ResyncEvery && !resyncAt.IsZero() && !time.Now().Before(resyncAt) {
			reason |= Resync // due, even if triggers kept it from being chosen
		}
		if r.opts.Resync > 0 && r.opts.ResyncMax > 0 && !forceAt.IsZero() && !time.Now().Before(forceAt) {
			reason |= Resync // triggers postponed it long enough
		}

		prevStart := lastStart
		if !r.opts.ResyncEvery || reason != Resync {
			// With ResyncEvery, MinInterval bounds the triggered runs: a
			// periodic resync does not make the next trigger wait.
			lastStart = time.Now()
		}
		err := r.fn(ctx, reason)
		end := time.Now()
		if errors.Is(err, ErrNothingDone) {
			// Nothing to bound the next run by: it may follow at once.
			lastStart, err = prevStart, nil
		}
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			failing = true
			if backoff == 0 {
				backoff = r.opts.BackoffMin
			} else {
				backoff = min(2*backoff, r.opts.BackoffMax)
			}
			retryAt = end.Add(r.jitter(backoff))
		} else {
			failing, backoff = false, 0
		}
		if r.opts.Resync > 0 && (!r.opts.ResyncEvery || reason&(Initial|Resync|Retry) != 0 || resyncAt.IsZero()) {
			resyncAt = end.Add(r.jitter(r.opts.Resync))
		}
		if r.opts.ResyncMax > 0 && reason&(Initial|Resync|Retry) != 0 {
			forceAt = end.Add(r.jitter(r.opts.ResyncMax))
		}
	}
}

// jitter shortens d by a random fraction of up to Options.Jitter.
func (r *Runner) jitter(d time.Duration) time.Duration {
	if r.opts.Jitter == 0 {
		return d
	}
	return d - time.Duration(rand.Float64()*r.opts.Jitter*float64(d))
}

func latest(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
