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
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/l4lb/l4lb/cluster"
	"github.com/l4lb/l4lb/cluster/controller"
	"github.com/l4lb/l4lb/nat"
	"github.com/l4lb/l4lb/sync/runner"
	"github.com/l4lb/l4lb/sync/source"
	"github.com/l4lb/l4lb/vip"
)

// etcdFlags say how to reach etcd (DESIGN section 10), for the controller
// and for agents with an etcd: source.
type etcdFlags struct {
	prefix   string
	caFile   string
	certFile string
	keyFile  string
}

func (e *etcdFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&e.prefix, "etcd-prefix", cluster.DefaultPrefix, "prefix of l4lb's keys in etcd")
	fs.StringVar(&e.caFile, "etcd-ca-file", "", "PEM file of the CAs that etcd's certificate is checked against (https:// endpoints)")
	fs.StringVar(&e.certFile, "etcd-cert-file", "", "client certificate (PEM) for etcd, with --etcd-key-file")
	fs.StringVar(&e.keyFile, "etcd-key-file", "", "key of the client certificate for etcd")
}

// client opens a client of the endpoints "URL[,URL]".
func (e *etcdFlags) client(endpoints string) (cluster.Layout, *cluster.ClientConfig, error) {
	l, err := cluster.NewLayout(e.prefix)
	if err != nil {
		return cluster.Layout{}, nil, fmt.Errorf("%w: --etcd-prefix: %v", errUsage, err)
	}
	eps, err := cluster.ParseEndpoints(endpoints)
	if err != nil {
		return cluster.Layout{}, nil, fmt.Errorf("%w: %v", errUsage, err)
	}
	return l, &cluster.ClientConfig{Endpoints: eps, CAFile: e.caFile, CertFile: e.certFile, KeyFile: e.keyFile}, nil
}

type controllerFlags struct {
	model     modelFlags
	etcd      etcdFlags
	endpoints string
	ttl       time.Duration
	apiListen string
	resync    time.Duration
	minSync   time.Duration
	logLevel  string
}

func (f *controllerFlags) register(fs *flag.FlagSet) {
	m := &f.model
	m.pool4, m.pool6, m.table = vip.DefaultPool4, vip.DefaultPool6, nat.DefaultTable
	fs.Var(&m.sources, "source", "where VIPs come from: file:PATH, marathon:URL or mesos:URL (repeat to merge)")
	fs.Var(prefixFlag{&m.pool4}, "vip-pool", "IPv4 pool of named VIP addresses, for the whole cluster")
	fs.Var(prefixFlag{&m.pool6}, "vip-pool6", "IPv6 pool of named VIP addresses, for the whole cluster")
	fs.StringVar(&m.zone, "dns-zone", vip.DefaultDomain, "DNS zone of named VIPs: NAME.marathon.ZONE")
	registerSources(fs, &m.marathon, &m.mesos)
	f.etcd.register(fs)
	fs.StringVar(&f.endpoints, "etcd", "", "etcd endpoints, comma-separated: http(s)://HOST:PORT")
	fs.DurationVar(&f.ttl, "etcd-lease-ttl", 5*time.Second, "TTL of the leadership lease: a dead leader is replaced within twice this")
	fs.StringVar(&f.apiListen, "api-listen", "127.0.0.1:62081", "HTTP API listen address (/v1/vips, /v1/problems, /metrics, /healthz)")
	fs.DurationVar(&f.resync, "resync", 30*time.Second, "period of the full read of the sources")
	fs.DurationVar(&f.minSync, "min-sync-interval", 200*time.Millisecond, "least time between two writes: bursts of changes coalesce")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
}

func cmdController(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("controller")
	var f controllerFlags
	f.register(fs)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: l4lb controller --source SPEC [--source SPEC ...] --etcd URL[,URL] [flags]\n\nThe cluster's single writer: of all controllers one is elected through etcd;\nit reads the sources, allocates named VIP addresses once for the cluster and\nwrites the VIPs to etcd, where agents (l4lb run --source etcd:URL) read them.\n\nFlags:")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if err := f.model.check(); err != nil {
		return err
	}
	if f.endpoints == "" {
		return fmt.Errorf("%w: --etcd is required", errUsage)
	}
	if f.ttl < time.Second {
		return fmt.Errorf("%w: --etcd-lease-ttl %s is below one second", errUsage, f.ttl)
	}
	if f.resync < time.Second {
		return fmt.Errorf("%w: --resync %s is below one second", errUsage, f.resync)
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return fmt.Errorf("%w: --log-level: %v", errUsage, err)
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level}))
	for _, spec := range f.model.sources {
		if kind, _, _ := strings.Cut(spec, ":"); kind == "etcd" {
			return fmt.Errorf("%w: --source %s: the controller reads Marathon, Mesos or files, and writes etcd", errUsage, spec)
		}
	}
	sources, err := f.model.parseSources(func(spec string, o *source.Options) {
		o.Marathon.OnStreamError = func(err error, retryIn time.Duration) {
			log.Warn("marathon event stream lost", "source", spec, "err", err, "retryIn", retryIn)
		}
		o.Mesos.OnStreamError = func(err error, retryIn time.Duration) {
			log.Warn("mesos subscription lost", "source", spec, "err", err, "retryIn", retryIn)
		}
	})
	if err != nil {
		return err
	}
	layout, ccfg, err := f.etcd.client(f.endpoints)
	if err != nil {
		return err
	}
	cli, err := cluster.NewClient(*ccfg)
	if err != nil {
		return err
	}
	defer cli.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	host, _ := os.Hostname()
	c := controller.New(controller.Config{
		Client:  cli,
		Layout:  layout,
		TTL:     f.ttl,
		Sources: sources,
		Model:   vip.Config{Pool4: f.model.pool4, Pool6: f.model.pool6, Domain: f.model.zone, Resolver: &vip.CachingResolver{}},
		Name:    host + "/" + strconv.Itoa(os.Getpid()),
		Metrics: controller.NewMetrics(reg),
		Logger:  log,
		Runner: runner.Options{MinInterval: f.minSync, Resync: f.resync, BackoffMin: 250 * time.Millisecond,
			BackoffMax: 10 * time.Second, Jitter: 0.1},
	})
	ln, err := net.Listen("tcp", f.apiListen)
	if err != nil {
		return fmt.Errorf("api listen %s: %w", f.apiListen, err)
	}
	metrics := promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelError)})
	srv := &http.Server{Handler: c.Handler(metrics), ReadHeaderTimeout: 5 * time.Second}
	log.Info("starting controller", "sources", f.model.sources.String(), "etcd", f.endpoints, "prefix", layout.Prefix(),
		"ttl", f.ttl.String(), "vipPool", f.model.pool4.String(), "vipPool6", f.model.pool6.String(), "zone", f.model.zone,
		"api", ln.Addr().String())

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("api: %w", err)
		}
	}()
	go func() {
		defer wg.Done()
		errc <- c.Run(ctx)
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
	log.Info("controller stopped")
	return runErr
}
