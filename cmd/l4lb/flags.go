package main

import (
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/l4lb/l4lb/nat"
	"github.com/l4lb/l4lb/sync/source"
	"github.com/l4lb/l4lb/vip"
)

// listFlag is a flag that may be repeated; each value may also hold several
// comma-separated items.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	for _, item := range strings.Split(v, ",") {
		if item = strings.TrimSpace(item); item != "" {
			*l = append(*l, item)
		}
	}
	return nil
}

// prefixFlag is a network prefix such as 11.0.0.0/8.
type prefixFlag struct{ p *netip.Prefix }

func (f prefixFlag) String() string {
	if f.p == nil || !f.p.IsValid() {
		return ""
	}
	return f.p.String()
}

func (f prefixFlag) Set(v string) error {
	p, err := netip.ParsePrefix(strings.TrimSpace(v))
	if err != nil {
		return fmt.Errorf("not a prefix: %w", err)
	}
	*f.p = p.Masked()
	return nil
}

// prefixListFlag is a comma-separated list of prefixes, such as
// 198.18.255.0/24,fd00:198:18::/64; it may be repeated.
type prefixListFlag struct{ l *[]netip.Prefix }

func (f prefixListFlag) String() string {
	if f.l == nil {
		return ""
	}
	s := make([]string, len(*f.l))
	for i, p := range *f.l {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

func (f prefixListFlag) Set(v string) error {
	for _, item := range strings.Split(v, ",") {
		if item = strings.TrimSpace(item); item == "" {
			continue
		}
		p, err := netip.ParsePrefix(item)
		if err != nil {
			return fmt.Errorf("not a prefix: %w", err)
		}
		*f.l = append(*f.l, p.Masked())
	}
	return nil
}

// modelFlags are the flags that decide the desired state, shared by run and
// render so that render prints exactly what run applies.
type modelFlags struct {
	sources  listFlag
	pool4    netip.Prefix
	pool6    netip.Prefix
	ipRanges []netip.Prefix // --ip-vip-ranges: where IP VIPs may be; empty: anywhere the guard allows
	stateDir string
	table    string
	zone     string
	marathon source.MarathonOptions
	mesos    source.MesosOptions
	resolver vip.Resolver // agent and task host names, shared by every source
}

func (m *modelFlags) register(fs *flag.FlagSet) {
	m.pool4, m.pool6 = vip.DefaultPool4, vip.DefaultPool6
	fs.Var(&m.sources, "source", "where VIPs come from: file:PATH, marathon:URL or mesos:URL (repeat to merge); in cluster mode etcd:URL[,URL] alone")
	fs.Var(prefixFlag{&m.pool4}, "vip-pool", "IPv4 pool of named VIP addresses")
	fs.Var(prefixFlag{&m.pool6}, "vip-pool6", "IPv6 pool of named VIP addresses")
	fs.Var(prefixListFlag{&m.ipRanges}, "ip-vip-ranges", "CIDR[,CIDR]: IP VIPs (labels with an address) must fall inside these ranges; recommended in production")
	fs.StringVar(&m.stateDir, "state-dir", "/var/lib/l4lb", "directory for persistent state (VIP address allocations)")
	fs.StringVar(&m.table, "table", nat.DefaultTable, "name of l4lb's nftables table (family inet)")
	fs.StringVar(&m.zone, "dns-zone", vip.DefaultDomain, "DNS zone of named VIPs: NAME.marathon.ZONE")
	registerSources(fs, &m.marathon, &m.mesos)
}

// registerSources registers the options of marathon:URL and mesos:URL
// sources, for run, render and controller.
func registerSources(fs *flag.FlagSet, o *source.MarathonOptions, mo *source.MesosOptions) {
	fs.StringVar(&o.CAFile, "marathon-ca-file", "", "PEM file of the CAs that Marathon's HTTPS certificate is checked against (e.g. dcos-ca.crt)")
	fs.StringVar(&o.TokenFile, "marathon-token-file", "", "file holding an auth token for Marathon (re-read when it changes); basic auth goes in the URL")
	fs.StringVar(&o.TokenScheme, "marathon-token-scheme", "", `how the token is sent: "token" (Authorization: token=..., DC/OS; the default) or "bearer"`)
	fs.DurationVar(&o.RequestTimeout, "marathon-timeout", 30*time.Second, "bound of one read of Marathon's apps")
	fs.DurationVar(&o.IdleTimeout, "marathon-idle-timeout", 30*time.Second, "reconnect Marathon's event stream after this long without a byte (it sends keep-alives)")
	fs.StringVar(&mo.CAFile, "mesos-ca-file", "", "PEM file of the CAs that the Mesos master's HTTPS certificate is checked against (e.g. dcos-ca.crt)")
	fs.StringVar(&mo.TokenFile, "mesos-token-file", "", "file holding an auth token for the Mesos master (re-read when it changes); basic auth goes in the URL")
	fs.StringVar(&mo.TokenScheme, "mesos-token-scheme", "", `how the token is sent to Mesos: "token" (the default) or "bearer"`)
}

// guard is the part of the IP VIP guard that the flags decide.
func (m *modelFlags) guard() vip.Guard { return vip.Guard{Ranges: m.ipRanges} }

// checkPoolsLocal refuses pools that overlap the agent's own addresses or
// its connected networks (DESIGN section 1): an error at start.
func (m *modelFlags) checkPoolsLocal(l *vip.LocalNets) error {
	for _, p := range []struct {
		flag string
		p    netip.Prefix
	}{{"--vip-pool", m.pool4}, {"--vip-pool6", m.pool6}} {
		if reason := l.PoolReason(p.p); reason != "" {
			return fmt.Errorf("%s %s %s: named VIPs would take these addresses over", p.flag, p.p, reason)
		}
	}
	return nil
}

// parseSources turns --source specs into sources with the Marathon options.
func (m *modelFlags) parseSources(onStream func(spec string, o *source.Options)) ([]source.Source, error) {
	var out []source.Source
	if m.resolver == nil {
		m.resolver = &vip.CachingResolver{}
	}
	for _, spec := range m.sources {
		o := source.Options{Marathon: m.marathon, Mesos: m.mesos, Model: vip.Config{Domain: m.zone, Resolver: m.resolver}}
		if onStream != nil {
			onStream(spec, &o)
		}
		s, err := source.ParseWithOptions(spec, o)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", errUsage, err)
		}
		out = append(out, s)
	}
	return out, nil
}

func (m *modelFlags) check() error {
	if len(m.sources) == 0 {
		return fmt.Errorf("%w: at least one --source is required", errUsage)
	}
	if !m.pool4.Addr().Is4() {
		return fmt.Errorf("%w: --vip-pool %s is not an IPv4 prefix", errUsage, m.pool4)
	}
	if !m.pool6.Addr().Is6() || m.pool6.Addr().Is4In6() {
		return fmt.Errorf("%w: --vip-pool6 %s is not an IPv6 prefix", errUsage, m.pool6)
	}
	if m.pool6.Bits() < 64 {
		return fmt.Errorf("%w: --vip-pool6 %s: pools larger than a /64 are not supported", errUsage, m.pool6)
	}
	// A named VIP takes its address over on the agent: a pool must not
	// overlap addresses that are not meant for VIPs.
	for _, p := range []struct {
		flag string
		p    netip.Prefix
	}{{"--vip-pool", m.pool4}, {"--vip-pool6", m.pool6}} {
		if reason := vip.StaticPoolReason(p.p); reason != "" {
			return fmt.Errorf("%w: %s %s %s: named VIPs would take these addresses over", errUsage, p.flag, p.p, reason)
		}
	}
	if m.zone == "" || strings.ContainsAny(m.zone, " \t/:") || strings.HasPrefix(m.zone, ".") {
		return fmt.Errorf("%w: --dns-zone %q is not a domain", errUsage, m.zone)
	}
	m.zone = strings.TrimSuffix(strings.ToLower(m.zone), ".")
	if m.table == "" || strings.ContainsAny(m.table, " \t\"'") {
		return fmt.Errorf("%w: --table %q is not a usable table name", errUsage, m.table)
	}
	return nil
}

func newFlagSet(name string) *flag.FlagSet { return flag.NewFlagSet(name, flag.ContinueOnError) }

// parseFlags parses args, then fills every flag not given on the command
// line from its environment variable L4LB_<FLAG>.
func parseFlags(fs *flag.FlagSet, args []string, stderr io.Writer) error {
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return err
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || err != nil {
			return
		}
		env := envName(f.Name)
		if v, ok := os.LookupEnv(env); ok {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("%w: %s=%q: %v", errUsage, env, v, e)
			}
		}
	})
	return err
}

// envName is the environment variable of a flag: --dns-listen reads
// L4LB_DNS_LISTEN.
func envName(flagName string) string {
	return "L4LB_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}
