// Package cluster is l4lb's cluster mode on etcd (DESIGN section 10): one
// controller, elected among several, reads Marathon or Mesos, allocates
// named VIP addresses once for the cluster and writes the VIPs to etcd;
// every agent lists and watches them. This file is the key layout and the
// codec of the values, pure and shared by both sides:
//
//	<prefix>/v1/leader/...               the election (concurrency.Election)
//	<prefix>/v1/config                   {"pool4": ..., "pool6": ..., "domain": ...}
//	<prefix>/v1/alloc/<name>             {"ip4": ..., "ip6": ...}
//	<prefix>/v1/vips/<ip>/<proto>/<port> the VIP as GET /v1/vips shows it
package cluster

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/l4lb/l4lb/sync/source"
	"github.com/l4lb/l4lb/vip"
)

// DefaultPrefix is where l4lb's keys live unless --etcd-prefix says.
const DefaultPrefix = "/l4lb"

// Layout names the keys under one prefix.
type Layout struct {
	prefix string // without a trailing slash
}

// NewLayout checks and normalises a prefix: it starts with "/" and has no
// trailing "/" (except the root "/", which gives keys "/v1/...").
func NewLayout(prefix string) (Layout, error) {
	if !strings.HasPrefix(prefix, "/") {
		return Layout{}, fmt.Errorf("etcd prefix %q: must start with /", prefix)
	}
	if strings.ContainsAny(prefix, " \t\n") {
		return Layout{}, fmt.Errorf("etcd prefix %q: must not contain spaces", prefix)
	}
	return Layout{prefix: strings.TrimRight(prefix, "/")}, nil
}

// Prefix is the normalised prefix.
func (l Layout) Prefix() string { return l.prefix }

// Leader is the election prefix.
func (l Layout) Leader() string { return l.prefix + "/v1/leader" }

// Config is the key of the cluster's model settings.
func (l Layout) Config() string { return l.prefix + "/v1/config" }

// Allocs is the prefix of the named VIP allocations.
func (l Layout) Allocs() string { return l.prefix + "/v1/alloc/" }

// Alloc is the key of one name's addresses.
func (l Layout) Alloc(name string) string { return l.Allocs() + name }

// VIPs is the prefix of the VIP keys.
func (l Layout) VIPs() string { return l.prefix + "/v1/vips/" }

// VIPKey is the key of one VIP: <prefix>/v1/vips/<ip>/<proto>/<port>.
func (l Layout) VIPKey(k vip.Key) string {
	return l.VIPs() + k.Addr.String() + "/" + k.Proto.String() + "/" + strconv.Itoa(int(k.Port))
}

// ParseVIPKey reads a VIP key back.
func (l Layout) ParseVIPKey(key string) (vip.Key, error) {
	rest, ok := strings.CutPrefix(key, l.VIPs())
	if !ok {
		return vip.Key{}, fmt.Errorf("key %q is not under %s", key, l.VIPs())
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 3 {
		return vip.Key{}, fmt.Errorf("key %q: want %s<ip>/<proto>/<port>", key, l.VIPs())
	}
	ip, err := netip.ParseAddr(parts[0])
	if err != nil || ip.Zone() != "" || ip.Is4In6() {
		return vip.Key{}, fmt.Errorf("key %q: %q is not an IP address", key, parts[0])
	}
	proto, err := parseProto(parts[1])
	if err != nil {
		return vip.Key{}, fmt.Errorf("key %q: %w", key, err)
	}
	port, err := strconv.ParseUint(parts[2], 10, 16)
	if err != nil || port == 0 || strconv.FormatUint(port, 10) != parts[2] {
		return vip.Key{}, fmt.Errorf("key %q: port %q is not a number in 1..65535", key, parts[2])
	}
	return vip.Key{Addr: ip, Proto: proto, Port: uint16(port)}, nil
}

// ParseAllocKey returns the name of an allocation key.
func (l Layout) ParseAllocKey(key string) (string, error) {
	name, ok := strings.CutPrefix(key, l.Allocs())
	if !ok || name == "" || strings.Contains(name, "/") {
		return "", fmt.Errorf("key %q: want %s<name>", key, l.Allocs())
	}
	return name, nil
}

func parseProto(s string) (vip.Proto, error) {
	switch s {
	case "tcp":
		return vip.TCP, nil
	case "udp":
		return vip.UDP, nil
	}
	return 0, fmt.Errorf("protocol %q: want tcp or udp", s)
}

// Config is what agents take from <prefix>/v1/config: the pools and the
// domain the controller built names and addresses with.
type Config struct {
	Pool4  netip.Prefix `json:"pool4"`
	Pool6  netip.Prefix `json:"pool6"`
	Domain string       `json:"domain"`
}

// EncodeConfig is the value of the config key.
func EncodeConfig(c Config) []byte {
	b, _ := json.Marshal(c) // prefixes and strings always encode
	return b
}

// DecodeConfig reads the config key's value.
func DecodeConfig(data []byte) (Config, error) {
	var c Config
	if err := strictUnmarshal(data, &c); err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	if !c.Pool4.IsValid() || !c.Pool4.Addr().Is4() {
		return Config{}, fmt.Errorf("config: pool4 %q is not an IPv4 prefix", c.Pool4)
	}
	if !c.Pool6.IsValid() || !c.Pool6.Addr().Is6() || c.Pool6.Addr().Is4In6() {
		return Config{}, fmt.Errorf("config: pool6 %q is not an IPv6 prefix", c.Pool6)
	}
	if c.Domain == "" {
		return Config{}, errors.New("config: empty domain")
	}
	return c, nil
}

// Alloc is the value of an allocation key: the addresses of one name.
type Alloc struct {
	IP4 netip.Addr `json:"ip4,omitzero"`
	IP6 netip.Addr `json:"ip6,omitzero"`
}

// EncodeAlloc is the value of an allocation key.
func EncodeAlloc(a Alloc) []byte {
	b, _ := json.Marshal(a)
	return b
}

// DecodeAlloc reads an allocation value.
func DecodeAlloc(data []byte) (Alloc, error) {
	var a Alloc
	if err := strictUnmarshal(data, &a); err != nil {
		return Alloc{}, err
	}
	if a.IP4.IsValid() && !a.IP4.Is4() || a.IP6.IsValid() && (!a.IP6.Is6() || a.IP6.Is4In6()) {
		return Alloc{}, fmt.Errorf("addresses %s and %s are not of their families", a.IP4, a.IP6)
	}
	if !a.IP4.IsValid() && !a.IP6.IsValid() {
		return Alloc{}, errors.New("no address")
	}
	return a, nil
}

// Allocs groups allocations by name, as the controller keeps them.
func Allocs(a vip.Allocations) map[string]Alloc {
	out := make(map[string]Alloc, len(a.V4))
	for name, ip := range a.V4 {
		e := out[name]
		e.IP4 = ip
		out[name] = e
	}
	for name, ip := range a.V6 {
		e := out[name]
		e.IP6 = ip
		out[name] = e
	}
	return out
}

// vipValue is a VIP as GET /v1/vips shows it (sync/api.VIP; a test keeps
// the two equal). It is repeated here so that the pipeline may import this
// package without a cycle.
type vipValue struct {
	VIP      string         `json:"vip"`
	Name     string         `json:"name,omitempty"`
	Protocol string         `json:"protocol"`
	IP       string         `json:"ip"`
	Port     uint16         `json:"port"`
	App      string         `json:"app"`
	Apps     []string       `json:"apps"`
	Backend  []backendValue `json:"backend"`
}

type backendValue struct {
	IP    string `json:"ip"`
	Port  uint16 `json:"port"`
	State string `json:"state"`
	Task  string `json:"task"`
	App   string `json:"app,omitempty"`
}

// EncodeVIP is the value of a VIP key: the VIP as GET /v1/vips shows it,
// compact, except that a backend's app is left out when it is the VIP's
// only app (DecodeVIP puts it back).
func EncodeVIP(v vip.VIP) []byte {
	e := vipValue{VIP: v.Label(), Name: v.Name, Protocol: v.Proto.String(), IP: v.Addr.String(), Port: v.Port,
		Apps: v.Apps, Backend: make([]backendValue, 0, len(v.Backends))}
	if e.Apps == nil {
		e.Apps = []string{}
	}
	if len(v.Apps) > 0 {
		e.App = v.Apps[0]
	}
	for _, b := range v.Backends {
		bv := backendValue{IP: b.Addr.String(), Port: b.Port, State: b.State.String(), Task: b.Task, App: b.App}
		if len(v.Apps) == 1 && b.App == v.Apps[0] {
			bv.App = "" // the VIP's only app: said once (a fifth of a value at 10 backends)
		}
		e.Backend = append(e.Backend, bv)
	}
	b, _ := json.Marshal(e)
	return b
}

// DecodeVIP reads the value of the VIP key k. The value must agree with
// its key (address, protocol, port); backends must be well formed.
func DecodeVIP(k vip.Key, data []byte) (vip.VIP, error) {
	var e vipValue
	if err := json.Unmarshal(data, &e); err != nil {
		return vip.VIP{}, fmt.Errorf("invalid JSON: %w", err)
	}
	v := vip.VIP{Name: e.Name, Addr: k.Addr, Port: k.Port, Proto: k.Proto}
	if e.IP != k.Addr.String() || e.Port != k.Port || e.Protocol != k.Proto.String() {
		return vip.VIP{}, fmt.Errorf("value says %s:%d/%s, the key %s", e.IP, e.Port, e.Protocol, k)
	}
	if v.Name != "" && (strings.ContainsAny(v.Name, " /:") || strings.HasSuffix(v.Name, ".")) {
		return vip.VIP{}, fmt.Errorf("name %q is not a DNS name", v.Name)
	}
	v.Apps = slices.Clone(e.Apps)
	if len(v.Apps) == 0 && e.App != "" {
		v.Apps = []string{e.App}
	}
	slices.Sort(v.Apps)
	v.Apps = slices.Compact(v.Apps)
	for i, b := range e.Backend {
		addr, err := netip.ParseAddr(b.IP)
		if err != nil || addr.Zone() != "" {
			return vip.VIP{}, fmt.Errorf("backend %d: %q is not an IP address", i, b.IP)
		}
		addr = addr.Unmap()
		if addr.Is4() != k.Addr.Is4() {
			return vip.VIP{}, fmt.Errorf("backend %d: %s is not of the VIP's family", i, addr)
		}
		if b.Port == 0 {
			return vip.VIP{}, fmt.Errorf("backend %d: port 0", i)
		}
		state, err := parseState(b.State)
		if err != nil {
			return vip.VIP{}, fmt.Errorf("backend %d: %w", i, err)
		}
		app := b.App
		if app == "" && len(v.Apps) == 1 {
			app = v.Apps[0]
		}
		v.Backends = append(v.Backends, vip.Backend{Addr: addr, Port: b.Port, State: state, Task: b.Task, App: app})
	}
	slices.SortFunc(v.Backends, func(a, b vip.Backend) int { return a.AddrPort().Compare(b.AddrPort()) })
	return v, nil
}

func parseState(s string) (vip.BackendState, error) {
	for _, st := range vip.BackendStates {
		if st.String() == s {
			return st, nil
		}
	}
	return 0, fmt.Errorf("state %q: want active, starting, draining or unhealthy", s)
}

// strictUnmarshal decodes one JSON object, refusing unknown fields and
// trailing data.
func strictUnmarshal(data []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(data))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return fmt.Errorf("invalid JSON: %w", err)
	}
	if d.More() {
		return errors.New("invalid JSON: data after the object")
	}
	return nil
}

// DeclLabel stands for the label in declarations read from etcd.
const DeclLabel = "etcd"

// VIPGroup turns one key and value under VIPs() into the group an agent's
// pipeline takes: one declaration per app of the VIP, with that app's
// backends, a named VIP pinned at the controller's address. A key or value
// that does not decode is a group with a problem naming the key, and no
// declaration: it costs that key alone.
func (l Layout) VIPGroup(key string, value []byte) source.Group {
	g := source.Group{Key: source.Key(key)}
	k, err := l.ParseVIPKey(key)
	if err == nil {
		var v vip.VIP
		if v, err = DecodeVIP(k, value); err == nil {
			g.Decls = Decls(v)
			return g
		}
		err = fmt.Errorf("key %s: %w", key, err)
	}
	g.Problems = []vip.Problem{{Label: key, Reason: err.Error()}}
	return g
}

// Decls are the declarations that rebuild v in an agent's Index: one per
// app, each with that app's backends (backends of no listed app go with
// the first), a named VIP pinned at v.Addr. An IP VIP is declared by its
// address, not pinned: the agent's pipeline checks it like any other, and
// that is where the agent-local part of the IP VIP guard applies (issue
// 15: the agent's own addresses and connected networks).
func Decls(v vip.VIP) []vip.Decl {
	spec := vip.Spec{Name: v.Name, Port: v.Port}
	var pin netip.Addr
	if v.Name == "" {
		spec.IP = v.Addr
	} else {
		pin = v.Addr
	}
	apps := v.Apps
	if len(apps) == 0 {
		apps = []string{""}
	}
	out := make([]vip.Decl, len(apps))
	idx := make(map[string]int, len(apps))
	for i, app := range apps {
		out[i] = vip.Decl{Spec: spec, Proto: v.Proto, App: app, Label: DeclLabel, Addr: pin}
		idx[app] = i
	}
	for _, b := range v.Backends {
		i, ok := idx[b.App]
		if !ok {
			i = 0
		}
		out[i].Backends = append(out[i].Backends, b)
	}
	return out
}
