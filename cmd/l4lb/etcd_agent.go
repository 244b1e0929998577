package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/l4lb/l4lb/cluster"
	"github.com/l4lb/l4lb/sync/source"
)

// takeEtcdSpec removes the etcd:URL[,URL] source from the specs and returns
// its endpoints. In cluster mode it is the only source: the controller
// allocated every address, and agents follow it.
func takeEtcdSpec(specs *listFlag) (string, error) {
	var endpoints []string
	var rest listFlag
	for _, spec := range *specs {
		kind, arg, _ := strings.Cut(spec, ":")
		if kind != "etcd" {
			rest = append(rest, spec)
			continue
		}
		endpoints = append(endpoints, arg)
	}
	// listFlag splits on commas: etcd:URL1,URL2 arrives as "etcd:URL1",
	// "URL2"; the bare URLs that follow belong to it.
	if len(endpoints) == 0 {
		return "", nil
	}
	var other listFlag
	for _, spec := range rest {
		if strings.HasPrefix(spec, "http://") || strings.HasPrefix(spec, "https://") {
			endpoints = append(endpoints, spec)
			continue
		}
		other = append(other, spec)
	}
	if len(other) > 0 {
		return "", fmt.Errorf("%w: --source etcd:URL is the only source of an agent in cluster mode (also given: %s)", errUsage, other.String())
	}
	*specs = nil
	return strings.Join(endpoints, ","), nil
}

// etcdSource connects to etcd, reads the cluster's config (waiting for it
// while etcd or the controller is not there yet), checks the flags against
// it and takes the pools and the zone from it. The returned function closes
// the client.
func (f *runFlags) etcdSource(ctx context.Context, fs *flag.FlagSet, endpoints string, log *slog.Logger, reg prometheus.Registerer) (source.Source, func(), error) {
	layout, ccfg, err := f.etcd.client(endpoints)
	if err != nil {
		return nil, nil, err
	}
	cli, err := cluster.NewClient(*ccfg)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", errUsage, err)
	}
	conf, err := waitConfig(ctx, cli, layout, log)
	if err != nil {
		cli.Close()
		return nil, nil, err
	}
	set := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	check := func(c cluster.Config) error {
		var bad []string
		if c.Pool4 != f.pool4 {
			bad = append(bad, fmt.Sprintf("--vip-pool %s, etcd pool4 %s", f.pool4, c.Pool4))
		}
		if c.Pool6 != f.pool6 {
			bad = append(bad, fmt.Sprintf("--vip-pool6 %s, etcd pool6 %s", f.pool6, c.Pool6))
		}
		if c.Domain != f.zone {
			bad = append(bad, fmt.Sprintf("--dns-zone %s, etcd domain %s", f.zone, c.Domain))
		}
		if len(bad) > 0 {
			return fmt.Errorf("the flags disagree with the cluster's config (restart the agent to follow it): %s", strings.Join(bad, "; "))
		}
		return nil
	}
	if !set["vip-pool"] {
		f.pool4 = conf.Pool4
	}
	if !set["vip-pool6"] {
		f.pool6 = conf.Pool6
	}
	if !set["dns-zone"] {
		f.zone = conf.Domain
	}
	if err := check(conf); err != nil {
		cli.Close()
		return nil, nil, fmt.Errorf("%w: %v", errUsage, err)
	}
	s := cluster.NewSource(cli, layout, "etcd:"+endpoints, cluster.SourceOptions{
		CheckConfig: check,
		Metrics:     cluster.NewSourceMetrics(reg),
		Logger:      log,
	})
	return s, func() { cli.Close() }, nil
}

// waitConfig reads the cluster's config, retrying while etcd does not
// answer or no controller wrote it yet.
func waitConfig(ctx context.Context, cli *clientv3.Client, l cluster.Layout, log *slog.Logger) (cluster.Config, error) {
	backoff := 250 * time.Millisecond
	for {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		c, err := cluster.ReadConfig(rctx, cli, l)
		cancel()
		if err == nil {
			return c, nil
		}
		if ctx.Err() != nil {
			return cluster.Config{}, fmt.Errorf("read the cluster config: %w", err)
		}
		log.Warn("waiting for the cluster config in etcd", "key", l.Config(), "err", err, "retryIn", backoff)
		select {
		case <-ctx.Done():
			return cluster.Config{}, fmt.Errorf("read the cluster config: %w", err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}
