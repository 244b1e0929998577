package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/l4lb/l4lb/conntrack"
	"github.com/l4lb/l4lb/dns"
	"github.com/l4lb/l4lb/localnet"
	"github.com/l4lb/l4lb/nat"
	"github.com/l4lb/l4lb/nat/forward"
	"github.com/l4lb/l4lb/sync/api"
	"github.com/l4lb/l4lb/sync/reconcile"
	"github.com/l4lb/l4lb/sync/runner"
	"github.com/l4lb/l4lb/sync/source"
	"github.com/l4lb/l4lb/vip"
)

// runFlags are the daemon's flags (DESIGN section 3).
type runFlags struct {
	modelFlags
	etcd           etcdFlags
	dnsListen      listFlag
	dnsUpstreams   listFlag
	apiListen      string
	resync         time.Duration
	minSync        time.Duration
	flushUnhealthy bool
	logLevel       string
}

func (f *runFlags) register(fs *flag.FlagSet) {
	f.modelFlags.register(fs)
	f.etcd.register(fs)
	f.dnsListen = listFlag{"127.0.0.1:53"}
	fs.Var(&dnsListenFlag{l: &f.dnsListen}, "dns-listen", "DNS listen addresses, comma-separated; empty turns DNS off")
	fs.Var(&f.dnsUpstreams, "dns-upstream", "DNS servers for names outside the zone, comma-separated (otherwise REFUSED)")
	fs.StringVar(&f.apiListen, "api-listen", "127.0.0.1:62080", "HTTP API listen address (/v1/vips, /v1/problems, /metrics, /healthz)")
	fs.DurationVar(&f.resync, "resync", 30*time.Second, "period of the full resync that reads the kernel back and repairs drift: after this long without a change, and at least every 10 times this long")
	fs.DurationVar(&f.minSync, "min-sync-interval", 500*time.Millisecond, "least time between two syncs: bursts of changes coalesce")
	fs.BoolVar(&f.flushUnhealthy, "flush-unhealthy", true, "delete the conntrack entries of unhealthy backends, not only of gone ones")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
}

// dnsListenFlag replaces its default on first use, so that
// --dns-listen= (or L4LB_DNS_LISTEN=) turns DNS off.
type dnsListenFlag struct {
	l       *listFlag
	touched bool
}

func (d *dnsListenFlag) String() string {
	if d.l == nil {
		return ""
	}
	return d.l.String()
}

func (d *dnsListenFlag) Set(v string) error {
	if !d.touched {
		*d.l, d.touched = nil, true
	}
	return d.l.Set(v)
}

// resyncMaxFactor bounds how long changes may postpone the full resync, in
// --resync periods: a full read-back of the table takes seconds at 50,000
// VIPs and changes wait for it, so under constant churn it runs every 10
// periods (5 minutes at the default) rather than every period.
const resyncMaxFactor = 10

func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("run")
	var f runFlags
	f.register(fs)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: l4lb run --source SPEC [--source SPEC ...] [flags]\n\nThe agent daemon: programs VIPs into nftables and keeps them in sync.\nStopping it leaves the rules in place; `l4lb cleanup` removes them.\n\nFlags:")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if err := f.check(); err != nil {
		return err
	}
	if f.resync < time.Second {
		return fmt.Errorf("%w: --resync %s is below one second", errUsage, f.resync)
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return fmt.Errorf("%w: --log-level: %v", errUsage, err)
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level}))

	etcdEndpoints, err := takeEtcdSpec(&f.sources)
	if err != nil {
		return err
	}
	sources, err := f.parseSources(func(spec string, o *source.Options) {
		o.Marathon.OnStreamError = func(err error, retryIn time.Duration) {
			log.Warn("marathon event stream lost", "source", spec, "err", err, "retryIn", retryIn)
		}
		o.Marathon.OnStreamAttached = func() { log.Info("marathon event stream attached", "source", spec) }
		o.Mesos.OnStreamError = func(err error, retryIn time.Duration) {
			log.Warn("mesos subscription lost", "source", spec, "err", err, "retryIn", retryIn)
		}
		o.Mesos.OnSubscribed = func(tasks int) { log.Info("mesos subscribed", "source", spec, "vipTasks", tasks) }
		o.Marathon.MinInterval = f.minSync
		o.Marathon.OnAppError = func(appID string, err error) {
			log.Warn("cannot read marathon app; keeping its last good state", "source", spec, "app", appID, "err", err)
		}
	})
	if err != nil {
		return err
	}
	k, err := nat.New(f.table)
	if err != nil {
		return fmt.Errorf("open netlink (l4lb run needs root or CAP_NET_ADMIN): %w", err)
	}
	defer k.Close()
	// The agent's addresses and connected networks: no pool may overlap
	// them, and no IP VIP may take them (re-read every sync).
	nets, err := localnet.New()
	if err != nil {
		return fmt.Errorf("open route netlink: %w", err)
	}
	defer nets.Close()
	local, err := nets.Read(ctx)
	if err != nil {
		return fmt.Errorf("read the agent's networks: %w", err)
	}
	if err := f.checkPoolsLocal(local); err != nil {
		return err
	}
	guard := f.guard()
	guard.Local = local

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if etcdEndpoints != "" {
		// Cluster mode: the pools and the zone are the cluster's.
		s, closeEtcd, err := f.etcdSource(ctx, fs, etcdEndpoints, log, reg)
		if err != nil {
			return err
		}
		defer closeEtcd()
		sources = []source.Source{s}
		f.sources = listFlag{s.String()}
	}
	ct, err := conntrack.New()
	if err != nil {
		return fmt.Errorf("open conntrack netlink (l4lb run needs root or CAP_NET_ADMIN): %w", err)
	}
	defer ct.Close()
	ctMetrics, err := conntrack.NewMetrics(reg)
	if err != nil {
		return err
	}
	// DNS binds before anything else, so that a taken port fails the start.
	var dnsSrv *dns.Server
	var publisher reconcile.Publisher
	if len(f.dnsListen) > 0 {
		dnsSrv, err = dns.New(dns.Config{Listen: f.dnsListen, Upstreams: f.dnsUpstreams, Zone: f.zone, Registerer: reg})
		if err != nil {
			return fmt.Errorf("%w: %v", errUsage, err)
		}
		if err := dnsSrv.Listen(); err != nil {
			return fmt.Errorf("dns listen (port 53 needs root or CAP_NET_BIND_SERVICE): %w", err)
		}
		publisher = dnsSrv
	}

	rec := reconcile.New(reconcile.Config{
		Sources:   sources,
		NAT:       k,
		Forward:   forward.New(),
		Conntrack: conntrack.NewCleaner(ct, f.flushUnhealthy, ctMetrics),
		Metrics:   reconcile.NewMetrics(reg),
		Model:     vip.Config{Pool4: f.pool4, Pool6: f.pool6, Domain: f.zone, Resolver: f.resolver, Guard: guard},
		Local:     nets,
		DNS:       publisher,
		DNSZone:   f.zone,
		Table:     f.table,
		StateDir:  f.stateDir,
		Logger:    log,
		AfterList: memorySettler(log),
	})

	ln, err := net.Listen("tcp", f.apiListen)
	if err != nil {
		return fmt.Errorf("api listen %s: %w", f.apiListen, err)
	}
	metrics := promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelError)})
	srv := &http.Server{Handler: api.Handler(rec.Status, metrics), ReadHeaderTimeout: 5 * time.Second}

	log.Info("starting", "sources", f.sources.String(), "table", f.table, "vipPool", f.pool4.String(),
		"vipPool6", f.pool6.String(), "ipVIPRanges", prefixListFlag{&f.ipRanges}.String(), "agentOwn", len(local.Own), "agentConnected", len(local.Connected), "api", ln.Addr().String(), "dns", f.dnsListen.String(),
		"dnsUpstreams", f.dnsUpstreams.String(), "zone", f.zone, "resync", f.resync.String())
	if loose, err := conntrack.LoosePickup(); err != nil {
		log.Warn("cannot tell whether conntrack picks up mid-stream TCP packets", "err", err)
	} else if !loose {
		log.Warn("net.netfilter.nf_conntrack_tcp_loose is 0: clients of a backend whose flows are deleted " +
			"will not be reset by a live backend; set it to 1 (the kernel default)")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 3)
	if dnsSrv != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := dnsSrv.Run(ctx); err != nil {
				errc <- fmt.Errorf("dns: %w", err)
			}
		}()
	}
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("api: %w", err)
		}
	}()
	go func() {
		defer wg.Done()
		errc <- rec.Run(ctx, runner.Options{MinInterval: f.minSync, Resync: f.resync, ResyncMax: resyncMaxFactor * f.resync,
			BackoffMin: 250 * time.Millisecond, BackoffMax: 30 * time.Second, Jitter: 0.1})
	}()
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	cancel()
	shutdown, done := context.WithTimeout(context.Background(), 5*time.Second)
	defer done()
	_ = srv.Shutdown(shutdown)
	wg.Wait()
	log.Info("stopped; the rules stay in place", "table", f.table)
	return runErr
}

func cmdCleanup(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("cleanup")
	var table string
	fs.StringVar(&table, "table", nat.DefaultTable, "name of l4lb's nftables table (family inet)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: l4lb cleanup [--table NAME]\n\nRemoves l4lb's table, its routes and any iptables rules it added.\n\nFlags:")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	k, err := nat.New(table)
	if err != nil {
		return fmt.Errorf("open netlink (l4lb cleanup needs root or CAP_NET_ADMIN): %w", err)
	}
	defer k.Close()
	// The iptables rules go even when the table cannot: they are
	// independent.
	natErr := k.Cleanup(ctx)
	if err := forward.New().Cleanup(ctx); err != nil {
		return errors.Join(natErr, fmt.Errorf("iptables: %w", err))
	}
	if natErr != nil {
		return natErr
	}
	fmt.Fprintf(stdout, "removed table inet %s, its routes and its iptables rules (chain %s)\n", table, forward.Chain)
	return nil
}
