package runner

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// Every test runs in a synctest bubble: time is virtual, starts at the same
// instant and moves only when every goroutine of the bubble is blocked, so
// the times below are exact. The bubble also fails the test if a goroutine
// is left blocked at its end: Run must have returned.

// run is one call of the function: when (since the test started) and why.
type run struct {
	at  time.Duration
	why Reason
}

func (r run) String() string { return fmt.Sprintf("%s %s", r.at, r.why) }

// recorder is the function under the runner: it records its calls, takes
// dur (virtual) time, and returns the next of results (nil when none left).
type recorder struct {
	t0      time.Time
	dur     time.Duration
	mu      sync.Mutex
	runs    []run
	results []error
}

func newRecorder() *recorder { return &recorder{t0: time.Now()} }

func (rec *recorder) fn(ctx context.Context, why Reason) error {
	rec.mu.Lock()
	rec.runs = append(rec.runs, run{time.Since(rec.t0), why})
	var err error
	if len(rec.results) > 0 {
		err, rec.results = rec.results[0], rec.results[1:]
	}
	dur := rec.dur
	rec.mu.Unlock()
	if dur > 0 {
		select {
		case <-time.After(dur):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return err
}

func (rec *recorder) get() []run {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return slices.Clone(rec.runs)
}

// now is the virtual time since the test started.
func (rec *recorder) now() time.Duration { return time.Since(rec.t0) }

// check compares the runs so far with want.
func (rec *recorder) check(t *testing.T, want ...run) {
	t.Helper()
	if got := rec.get(); !slices.Equal(got, want) {
		t.Errorf("runs at %s:\n got  %v\n want %v", rec.now(), got, want)
	}
}

// start runs r in the background; stop cancels it and checks that Run
// returns nil at once.
func start(t *testing.T, r *Runner) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	return func() {
		t.Helper()
		cancel()
		synctest.Wait()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v", err)
			}
		default:
			t.Fatalf("Run did not return after cancel")
		}
	}
}

// sleepUntil sleeps until the virtual time since the test started is d,
// then lets the runner act.
func (rec *recorder) sleepUntil(d time.Duration) {
	time.Sleep(d - rec.now())
	synctest.Wait()
}

const forever = 1000 * time.Hour

func TestInitialRun(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := newRecorder()
		stop := start(t, New(rec.fn, Options{}))
		synctest.Wait()
		rec.check(t, run{0, Initial})
		rec.sleepUntil(forever)
		rec.check(t, run{0, Initial})
		stop()
	})
}

func TestTriggerBeforeRun(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := newRecorder()
		r := New(rec.fn, Options{})
		for range 5 {
			r.Trigger()
		}
		stop := start(t, r)
		rec.sleepUntil(time.Hour)
		rec.check(t, run{0, Initial | Triggered})
		stop()
	})
}

// A burst of triggers during a run gives exactly one more run, right after
// it.
func TestCoalescing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := newRecorder()
		rec.dur = 10 * time.Second
		r := New(rec.fn, Options{})
		stop := start(t, r)
		for i := range 90 {
			rec.sleepUntil(time.Second + time.Duration(i)*100*time.Millisecond)
			r.Trigger()
			r.Trigger()
		}
		rec.sleepUntil(time.Hour)
		rec.check(t, run{0, Initial}, run{10 * time.Second, Triggered})
		stop()
	})
}

// Runs start at least MinInterval apart; triggers within it wait and
// coalesce; a trigger after it runs at once.
func TestMinInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := newRecorder()
		rec.dur = 100 * time.Millisecond
		r := New(rec.fn, Options{MinInterval: time.Second})
		stop := start(t, r)

		rec.sleepUntil(200 * time.Millisecond)
		r.Trigger()
		rec.sleepUntil(999 * time.Millisecond)
		rec.check(t, run{0, Initial}) // still waiting
		rec.sleepUntil(1500 * time.Millisecond)
		rec.check(t, run{0, Initial}, run{time.Second, Triggered})

		for _, at := range []time.Duration{1600, 1700, 1999} {
			rec.sleepUntil(at * time.Millisecond)
			r.Trigger()
		}
		rec.sleepUntil(5 * time.Second)
		r.Trigger()
		rec.sleepUntil(time.Hour)
		rec.check(t,
			run{0, Initial},
			run{time.Second, Triggered},
			run{2 * time.Second, Triggered},
			run{5 * time.Second, Triggered},
		)
		stop()
	})
}

// Without triggers, the function runs every Resync after the previous run
// ended; any run restarts the period.
func TestResync(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := newRecorder()
		rec.dur = time.Second
		r := New(rec.fn, Options{Resync: 30 * time.Second, MinInterval: time.Second})
		stop := start(t, r)
		rec.sleepUntil(70 * time.Second)
		r.Trigger()
		rec.sleepUntil(150 * time.Second)
		rec.check(t,
			run{0, Initial},
			run{31 * time.Second, Resync},
			run{62 * time.Second, Resync},
			run{70 * time.Second, Triggered},
			run{101 * time.Second, Resync},
			run{132 * time.Second, Resync},
		)
		stop()
	})
}

var errFail = errors.New("apply failed")

// Failures are retried after BackoffMin, doubling to BackoffMax; a success
// resets the backoff.
func TestBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := newRecorder()
		rec.results = []error{errFail, errFail, errFail, errFail, errFail, errFail, nil}
		r := New(rec.fn, Options{BackoffMin: time.Second, BackoffMax: 8 * time.Second})
		stop := start(t, r)
		rec.sleepUntil(100 * time.Second)
		rec.check(t,
			run{0, Initial},
			run{1 * time.Second, Retry},
			run{3 * time.Second, Retry},
			run{7 * time.Second, Retry},
			run{15 * time.Second, Retry},
			run{23 * time.Second, Retry},
			run{31 * time.Second, Retry}, // succeeds
		)
		rec.mu.Lock()
		rec.results = []error{errFail, errFail, nil}
		rec.mu.Unlock()
		r.Trigger()
		rec.sleepUntil(200 * time.Second)
		rec.check(t,
			run{0, Initial},
			run{1 * time.Second, Retry},
			run{3 * time.Second, Retry},
			run{7 * time.Second, Retry},
			run{15 * time.Second, Retry},
			run{23 * time.Second, Retry},
			run{31 * time.Second, Retry},
			run{100 * time.Second, Triggered},
			run{101 * time.Second, Retry}, // the backoff started over
			run{103 * time.Second, Retry},
		)
		stop()
	})
}

// While a retry is pending, triggers do not bring it forward; they join it.
// The retry delay counts from the end of the failed run and respects
// MinInterval; a resync does not bypass the backoff either.
func TestTriggerDuringBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := newRecorder()
		rec.dur = 2 * time.Second
		rec.results = []error{errFail, errFail}
		r := New(rec.fn, Options{BackoffMin: 10 * time.Second, BackoffMax: time.Minute, MinInterval: 15 * time.Second, Resync: 5 * time.Second})
		stop := start(t, r)
		for _, at := range []time.Duration{3, 8, 14} {
			rec.sleepUntil(at * time.Second)
			r.Trigger()
		}
		rec.check(t, run{0, Initial}) // at 14s: the retry is due at max(2s+10s, 0s+15s)
		rec.sleepUntil(100 * time.Second)
		rec.check(t,
			run{0, Initial},
			run{15 * time.Second, Retry | Triggered},
			run{37 * time.Second, Retry},  // fails again at 17s: +20s
			run{52 * time.Second, Resync}, // success at 39s: resync due at 44s, min interval until 52s
			run{67 * time.Second, Resync},
			run{82 * time.Second, Resync},
			run{97 * time.Second, Resync},
		)
		stop()
	})
}

// Cancelling during a run: the run sees the context done and finishes, Run
// returns, and nothing runs again, even when triggered.
func TestCancelDuringRun(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var sawCancel bool
		started := make(chan struct{})
		r := New(func(ctx context.Context, why Reason) error {
			close(started)
			<-ctx.Done()
			time.Sleep(time.Second) // finishing up takes a while
			sawCancel = true
			return ctx.Err()
		}, Options{Resync: time.Second, BackoffMin: time.Millisecond})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- r.Run(ctx) }()
		<-started
		r.Trigger()
		time.Sleep(5 * time.Second)
		t0 := time.Now()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run returned %v", err)
		}
		if !sawCancel || time.Since(t0) != time.Second {
			t.Errorf("Run returned %s after cancel, before the run finished", time.Since(t0))
		}
		r.Trigger()
		time.Sleep(time.Hour) // a second run would panic on close(started)
	})
}

// Cancelling while waiting returns at once.
func TestCancelWhileWaiting(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := newRecorder()
		r := New(rec.fn, Options{Resync: time.Hour, MinInterval: time.Minute})
		stop := start(t, r)
		rec.sleepUntil(10 * time.Second)
		r.Trigger() // waits for the min interval
		rec.sleepUntil(20 * time.Second)
		stop()
		rec.sleepUntil(forever)
		rec.check(t, run{0, Initial})
	})
}

func TestRunTwice(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := newRecorder()
		r := New(rec.fn, Options{})
		stop := start(t, r)
		synctest.Wait()
		if err := r.Run(context.Background()); !errors.Is(err, ErrRunning) {
			t.Fatalf("second Run = %v, want ErrRunning", err)
		}
		stop()
		// Once it returned, the runner can run again, from a first run.
		rec.sleepUntil(time.Minute)
		stop = start(t, r)
		rec.sleepUntil(time.Minute)
		rec.check(t, run{0, Initial}, run{time.Minute, Initial})
		stop()
	})
}

// With jitter, resync periods and retry delays are shortened by up to the
// jitter fraction, and vary.
func TestJitter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := newRecorder()
		r := New(rec.fn, Options{Resync: 10 * time.Second, Jitter: 0.5})
		stop := start(t, r)
		rec.sleepUntil(1000 * time.Second)
		stop()
		runs := rec.get()
		gaps := map[time.Duration]bool{}
		for i := 1; i < len(runs); i++ {
			gap := runs[i].at - runs[i-1].at
			if gap < 5*time.Second || gap > 10*time.Second || runs[i].why != Resync {
				t.Fatalf("run %d: %v after %s", i, runs[i], gap)
			}
			gaps[gap] = true
		}
		if len(runs) < 100 || len(gaps) < 10 {
			t.Errorf("%d runs with %d distinct gaps", len(runs), len(gaps))
		}

		rec = newRecorder()
		rec.results = slices.Repeat([]error{errFail}, 50)
		r = New(rec.fn, Options{BackoffMin: 8 * time.Second, BackoffMax: 8 * time.Second, Jitter: 0.25})
		stop = start(t, r)
		rec.sleepUntil(1000 * time.Second)
		stop()
		runs = rec.get()
		for i := 1; i < 50; i++ {
			if gap := runs[i].at - runs[i-1].at; gap < 6*time.Second || gap > 8*time.Second {
				t.Fatalf("retry %d after %s", i, gap)
			}
		}
	})
}

func TestNewDefaults(t *testing.T) {
	r := New(func(context.Context, Reason) error { return nil }, Options{MinInterval: -1, Resync: -1, Jitter: 7})
	want := Options{BackoffMin: DefaultBackoffMin, BackoffMax: DefaultBackoffMax, Jitter: 1}
	if r.opts != want {
		t.Errorf("options %+v, want %+v", r.opts, want)
	}
	r = New(nil, Options{BackoffMin: time.Minute, BackoffMax: time.Second})
	if r.opts.BackoffMax != time.Minute {
		t.Errorf("BackoffMax %s below BackoffMin", r.opts.BackoffMax)
	}
	r = New(nil, Options{BackoffMin: 2 * time.Minute})
	if r.opts.BackoffMax != 2*time.Minute {
		t.Errorf("default BackoffMax %s below BackoffMin", r.opts.BackoffMax)
	}
}

func TestReasonString(t *testing.T) {
	for r, want := range map[Reason]string{
		0:                  "none",
		Initial:            "initial",
		Retry | Triggered:  "triggered|retry",
		Resync | Triggered: "triggered|resync",
	} {
		if got := r.String(); got != want {
			t.Errorf("%d: %q, want %q", r, got, want)
		}
	}
	if !(Retry | Triggered).Has(Retry) || Retry.Has(Retry|Triggered) {
		t.Errorf("Has")
	}
	if !strings.Contains(fmt.Sprint(run{time.Second, Resync}), "resync") {
		t.Errorf("run String")
	}
}

// With ResyncEvery, a constant stream of triggers does not postpone the
// resync: it stays periodic, counted from the last resync.
func TestResyncEveryUnderTriggers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := newRecorder()
		rec.dur = time.Second
		r := New(rec.fn, Options{Resync: 30 * time.Second, MinInterval: time.Second, ResyncEvery: true})
		stop := start(t, r)
		for at := 10 * time.Second; at <= 80*time.Second; at += 10 * time.Second {
			rec.sleepUntil(at)
			r.Trigger()
		}
		rec.sleepUntil(85 * time.Second)
		rec.check(t,
			run{0, Initial},
			run{10 * time.Second, Triggered},
			run{20 * time.Second, Triggered},
			run{30 * time.Second, Triggered},
			run{31 * time.Second, Resync},
			run{40 * time.Second, Triggered},
			run{50 * time.Second, Triggered},
			run{60 * time.Second, Triggered},
			run{62 * time.Second, Resync},
			run{70 * time.Second, Triggered},
			run{80 * time.Second, Triggered},
		)
		stop()
	})
}

// With ResyncMax, a constant stream of triggers postpones the resync only
// that long: the first run after it is a resync, and so is the next one
// ResyncMax after that, while a quiet spell still resyncs after Resync.
func TestResyncMaxUnderTriggers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := newRecorder()
		rec.dur = time.Second
		r := New(rec.fn, Options{Resync: 30 * time.Second, ResyncMax: 45 * time.Second, MinInterval: time.Second})
		stop := start(t, r)
		for at := 10 * time.Second; at <= 100*time.Second; at += 10 * time.Second {
			rec.sleepUntil(at)
			r.Trigger()
		}
		rec.sleepUntil(140 * time.Second)
		rec.check(t,
			run{0, Initial},
			run{10 * time.Second, Triggered},
			run{20 * time.Second, Triggered},
			run{30 * time.Second, Triggered},
			run{40 * time.Second, Triggered},
			run{50 * time.Second, Triggered | Resync}, // 46 s after the initial run ended
			run{60 * time.Second, Triggered},
			run{70 * time.Second, Triggered},
			run{80 * time.Second, Triggered},
			run{90 * time.Second, Triggered},
			run{100 * time.Second, Triggered | Resync},
			run{131 * time.Second, Resync}, // quiet: Resync after the last run
		)
		stop()
	})
}

// A run that did nothing (ErrNothingDone) does not make the next trigger
// wait for MinInterval.
func TestNothingDoneDoesNotDelay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := newRecorder()
		first := true
		fn := rec.fn
		r := New(func(ctx context.Context, why Reason) error {
			err := fn(ctx, why)
			if first {
				first = false
				return ErrNothingDone
			}
			return err
		}, Options{MinInterval: 500 * time.Millisecond})
		stop := start(t, r)
		rec.sleepUntil(100 * time.Millisecond)
		r.Trigger()
		rec.sleepUntil(time.Second)
		rec.check(t,
			run{0, Initial},
			run{100 * time.Millisecond, Triggered},
		)
		stop()
	})
}
