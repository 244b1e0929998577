// Package load generates the benchmark's traffic: a server that answers
// every TCP connection with one byte and closes after the client, a client
// that opens short connections (connect, read one byte, close) with several
// workers for a bounded time, and the parsing of iperf3's JSON. The harness
// runs the server and the client as its own subcommands inside the
// namespaces (`ip netns exec`), so each runs wholly in its namespace.
package load

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/l4lb/l4lb/bench/stats"
)

// Listener is one address a Server listens on and the byte it answers
// with, which tells the client which backend it reached.
type Listener struct {
	Addr netip.AddrPort
	Mark byte
}

// ParseListeners reads "ADDR:PORT=X,ADDR:PORT=Y" (X a single character).
func ParseListeners(s string) ([]Listener, error) {
	var out []Listener
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		addr, mark, ok := strings.Cut(item, "=")
		if !ok || len(mark) != 1 {
			return nil, fmt.Errorf("listener %q: want ADDR:PORT=X with one character X", item)
		}
		ap, err := netip.ParseAddrPort(addr)
		if err != nil {
			return nil, fmt.Errorf("listener %q: %w", item, err)
		}
		out = append(out, Listener{Addr: ap, Mark: mark[0]})
	}
	if len(out) == 0 {
		return nil, errors.New("no listeners")
	}
	return out, nil
}

// FormatListeners is the inverse of ParseListeners.
func FormatListeners(ls []Listener) string {
	parts := make([]string, len(ls))
	for i, l := range ls {
		parts[i] = fmt.Sprintf("%s=%c", l.Addr, l.Mark)
	}
	return strings.Join(parts, ",")
}

// holdLimit bounds how long the server keeps a connection the client has
// not closed.
const holdLimit = 5 * time.Minute

// Serve answers on every listener until ctx ends: each connection gets the
// listener's byte, then the server waits for the client to close (so the
// client closes first and holds TIME_WAIT), and closes. ready, when not
// nil, is called once every listener is open.
func Serve(ctx context.Context, ls []Listener, ready func()) error {
	var lns []net.Listener
	marks := make([]byte, 0, len(ls))
	for _, l := range ls {
		ln, err := net.Listen("tcp", l.Addr.String())
		if err != nil {
			for _, o := range lns {
				o.Close()
			}
			return fmt.Errorf("listen %s: %w", l.Addr, err)
		}
		lns = append(lns, ln)
		marks = append(marks, l.Mark)
	}
	if ready != nil {
		ready()
	}
	ServeOn(ctx, lns, marks)
	return nil
}

// ServeOn serves on listeners already open, lns[i] answering with
// marks[i], until ctx ends; it closes them and returns when every
// connection is closed.
func ServeOn(ctx context.Context, lns []net.Listener, marks []byte) {
	var wg sync.WaitGroup
	for i, ln := range lns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			acceptLoop(ctx, ln, marks[i], &wg)
		}()
	}
	<-ctx.Done()
	for _, ln := range lns {
		ln.Close()
	}
	wg.Wait()
}

func acceptLoop(ctx context.Context, ln net.Listener, mark byte, wg *sync.WaitGroup) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			stop := context.AfterFunc(ctx, func() { c.Close() })
			defer stop()
			if _, err := c.Write([]byte{mark}); err != nil {
				return
			}
			_ = c.SetReadDeadline(time.Now().Add(holdLimit))
			var buf [64]byte
			for {
				if _, err := c.Read(buf[:]); err != nil {
					return
				}
			}
		}()
	}
}

// ClientConfig is one client run.
type ClientConfig struct {
	Targets  []netip.AddrPort // each worker cycles through them
	Workers  int
	Duration time.Duration // how long workers start new connections
	Timeout  time.Duration // per connection: connect plus first byte
	// Hold opens this many connections before the run and keeps them open
	// until it ends (long-lived flows for conntrack measurements).
	Hold int
	// HoldAfter keeps the held connections open this long after the
	// workers stop, or until ctx ends, which then is no error.
	HoldAfter time.Duration
	// OnHeld is called once the held connections are open, before the
	// workers start.
	OnHeld func()
	// UntilMark ends the run at the first connection answered with this
	// mark (0: run for Duration).
	UntilMark byte
}

// ClientResult is what a client run measured. Times are wall-clock Unix
// nanoseconds, comparable with the harness's clock on the same machine.
type ClientResult struct {
	Conns      int              `json:"conns"`
	Errors     int              `json:"errors"`
	FirstErr   string           `json:"first_error,omitempty"`
	Elapsed    float64          `json:"elapsed_s"`
	Rate       float64          `json:"conns_per_s"`
	P50us      float64          `json:"p50_us"`
	P99us      float64          `json:"p99_us"`
	ByMark     map[string]int   `json:"by_mark"`
	LastNanos  map[string]int64 `json:"last_start_unix_ns"`  // start of the last connection answered with each mark
	FirstNanos map[string]int64 `json:"first_start_unix_ns"` // start of the first one
	Held       map[string]int   `json:"held,omitempty"`      // held connections by mark
	StartNs    int64            `json:"start_unix_ns"`
}

type workerResult struct {
	lat    []float64 // microseconds
	errs   int
	err1   error
	byMark map[byte]int
	last   map[byte]int64
	first  map[byte]int64
}

// RunClient runs the workers and returns what they measured. It stops
// early when ctx ends.
func RunClient(ctx context.Context, cfg ClientConfig) (ClientResult, error) {
	if len(cfg.Targets) == 0 || cfg.Workers < 1 || cfg.Duration <= 0 {
		return ClientResult{}, errors.New("client: need targets, workers >= 1 and a duration")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = time.Second
	}
	var heldBy map[string]int
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	if cfg.Hold > 0 {
		heldBy = map[string]int{}
		for i := range cfg.Hold {
			c, mark, err := dialOne(ctx, cfg.Targets[i%len(cfg.Targets)], cfg.Timeout)
			if err != nil {
				return ClientResult{}, fmt.Errorf("hold connection %d: %w", i, err)
			}
			held = append(held, c)
			heldBy[string(mark)]++
		}
	}
	if cfg.OnHeld != nil {
		cfg.OnHeld()
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	slice := runSlice(runCtx, stop, cfg, cfg.Targets, cfg.Duration)
	slice.Held = heldBy
	if err := ctx.Err(); err != nil {
		return slice, err
	}
	if len(held) > 0 && cfg.HoldAfter > 0 {
		select {
		case <-ctx.Done():
		case <-time.After(cfg.HoldAfter):
		}
	}
	return slice, nil
}

// runSlice runs the workers against targets for d (or until stop is
// called) and merges what they measured.
func runSlice(ctx context.Context, stop func(), cfg ClientConfig, targets []netip.AddrPort, d time.Duration) ClientResult {
	res := ClientResult{ByMark: map[string]int{}, LastNanos: map[string]int64{}, FirstNanos: map[string]int64{}}
	start := time.Now()
	res.StartNs = start.UnixNano()
	deadline := start.Add(d)
	results := make([]workerResult, cfg.Workers)
	var wg sync.WaitGroup
	for w := range cfg.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[w] = worker(ctx, stop, cfg, targets, w, deadline)
		}()
	}
	wg.Wait()
	res.Elapsed = time.Since(start).Seconds()
	var lat []float64
	for _, r := range results {
		lat = append(lat, r.lat...)
		res.Errors += r.errs
		if r.err1 != nil && res.FirstErr == "" {
			res.FirstErr = r.err1.Error()
		}
		for m, n := range r.byMark {
			res.ByMark[string(m)] += n
		}
		for m, t := range r.last {
			if t > res.LastNanos[string(m)] {
				res.LastNanos[string(m)] = t
			}
		}
		for m, t := range r.first {
			if f, ok := res.FirstNanos[string(m)]; !ok || t < f {
				res.FirstNanos[string(m)] = t
			}
		}
	}
	slices.Sort(lat)
	res.Conns = len(lat)
	res.Rate = float64(res.Conns) / res.Elapsed
	if res.Conns > 0 {
		res.P50us = stats.Percentile(lat, 50)
		res.P99us = stats.Percentile(lat, 99)
	}
	return res
}

// RoundsConfig alternates several target sets in slices: round i runs the
// sets in order when i is even and in reverse order when it is odd (ABBA
// for two sets), so that every set samples the same background load of a
// shared machine.
type RoundsConfig struct {
	Sets    [][]netip.AddrPort
	Workers int
	Timeout time.Duration
	Rounds  int
	Slice   time.Duration
}

// RoundsResult holds one result per set and round: Sets[k][i] is set k in
// round i, run back to back with the other sets of that round.
type RoundsResult struct {
	Sets [][]ClientResult `json:"sets"`
}

// RunRounds runs the rounds of slices.
func RunRounds(ctx context.Context, cfg RoundsConfig) (RoundsResult, error) {
	if len(cfg.Sets) == 0 || cfg.Workers < 1 || cfg.Rounds < 1 || cfg.Slice <= 0 {
		return RoundsResult{}, errors.New("rounds: need target sets, workers >= 1, rounds >= 1 and a slice length")
	}
	for k, set := range cfg.Sets {
		if len(set) == 0 {
			return RoundsResult{}, fmt.Errorf("rounds: target set %d is empty", k)
		}
	}
	cc := ClientConfig{Workers: cfg.Workers, Timeout: cfg.Timeout}
	if cc.Timeout <= 0 {
		cc.Timeout = time.Second
	}
	res := RoundsResult{Sets: make([][]ClientResult, len(cfg.Sets))}
	for k := range res.Sets {
		res.Sets[k] = make([]ClientResult, cfg.Rounds)
	}
	for i := range cfg.Rounds {
		for j := range cfg.Sets {
			k := j
			if i%2 == 1 {
				k = len(cfg.Sets) - 1 - j
			}
			if ctx.Err() != nil {
				return res, ctx.Err()
			}
			res.Sets[k][i] = runSlice(ctx, func() {}, cc, cfg.Sets[k], cfg.Slice)
		}
	}
	return res, ctx.Err()
}

func worker(ctx context.Context, stop func(), cfg ClientConfig, targets []netip.AddrPort, w int, deadline time.Time) workerResult {
	r := workerResult{byMark: map[byte]int{}, last: map[byte]int64{}, first: map[byte]int64{}}
	i := w
	for ctx.Err() == nil {
		now := time.Now()
		if !now.Before(deadline) {
			break
		}
		target := targets[i%len(targets)]
		i++
		c, mark, err := dialOne(ctx, target, cfg.Timeout)
		if err != nil {
			if ctx.Err() != nil {
				break // the run ended while this connection was under way
			}
			r.errs++
			if r.err1 == nil {
				r.err1 = err
			}
			// A refusing target answers at once: do not spin on it.
			time.Sleep(time.Millisecond)
			continue
		}
		c.Close()
		r.lat = append(r.lat, float64(time.Since(now).Nanoseconds())/1e3)
		r.byMark[mark]++
		t := now.UnixNano()
		if t > r.last[mark] {
			r.last[mark] = t
		}
		if f, ok := r.first[mark]; !ok || t < f {
			r.first[mark] = t
		}
		if cfg.UntilMark != 0 && mark == cfg.UntilMark {
			stop()
		}
	}
	return r
}

// dialOne connects, reads the server's byte and returns the open
// connection.
func dialOne(ctx context.Context, target netip.AddrPort, timeout time.Duration) (net.Conn, byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", target.String())
	if err != nil {
		return nil, 0, err
	}
	dl, _ := ctx.Deadline()
	_ = c.SetReadDeadline(dl)
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		c.Close()
		return nil, 0, fmt.Errorf("read from %s: %w", target, err)
	}
	return c, b[0], nil
}
