// Package vip holds l4lb's model: Marathon apps in, VIPs with their addresses
// and backends out. Everything here is pure and needs no privileges.
package vip

import (
	"cmp"
	"fmt"
	"net/netip"
	"strconv"
)

// Proto is a transport protocol of a VIP.
type Proto uint8

// Protocols by IANA number, as the kernel sees them.
const (
	TCP Proto = 6
	UDP Proto = 17
)

func (p Proto) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	}
	return "proto" + strconv.Itoa(int(p))
}

// BackendState says what a backend gets.
type BackendState uint8

// Backend states. Only active backends get new connections; draining ones
// keep the connections they have; unhealthy ones lose them too. A starting
// backend (a new task whose health checks have no result yet) gets no
// traffic and has nothing to flush.
const (
	Active BackendState = iota
	Draining
	Unhealthy
	Starting
)

// BackendStates lists every state, for metrics.
var BackendStates = []BackendState{Active, Starting, Draining, Unhealthy}

func (s BackendState) String() string {
	switch s {
	case Active:
		return "active"
	case Draining:
		return "draining"
	case Unhealthy:
		return "unhealthy"
	case Starting:
		return "starting"
	}
	return "state" + strconv.Itoa(int(s))
}

// MarshalText makes states readable in JSON.
func (s BackendState) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Key identifies a VIP in the kernel: address, protocol and port.
type Key struct {
	Addr  netip.Addr
	Proto Proto
	Port  uint16
}

func (k Key) String() string {
	return netip.AddrPortFrom(k.Addr, k.Port).String() + "/" + k.Proto.String()
}

// Compare orders keys by family, address, protocol and port.
func (k Key) Compare(o Key) int {
	if c := k.Addr.Compare(o.Addr); c != 0 {
		return c
	}
	if c := cmp.Compare(k.Proto, o.Proto); c != 0 {
		return c
	}
	return cmp.Compare(k.Port, o.Port)
}

// VIP is one virtual service: an address, a port and a protocol, with the
// backends of every task that serves it.
type VIP struct {
	Name     string // DNS name without the trailing dot; empty for an IP VIP
	Addr     netip.Addr
	Port     uint16
	Proto    Proto
	Apps     []string  // ids of the apps that declare it, sorted
	Backends []Backend // sorted by address and port
}

// Key returns the VIP's kernel key.
func (v VIP) Key() Key { return Key{Addr: v.Addr, Proto: v.Proto, Port: v.Port} }

// Label is the VIP as users name it: "name:port" for a named VIP, "ip:port"
// for an IP VIP (IPv6 in brackets).
func (v VIP) Label() string {
	if v.Name != "" {
		return v.Name + ":" + strconv.Itoa(int(v.Port))
	}
	return netip.AddrPortFrom(v.Addr, v.Port).String()
}

// String is the audit form "name:port/proto" (or "ip:port/proto").
func (v VIP) String() string { return v.Label() + "/" + v.Proto.String() }

// Active returns the backends that get new connections.
func (v VIP) Active() []Backend {
	var out []Backend
	for _, b := range v.Backends {
		if b.State == Active {
			out = append(out, b)
		}
	}
	return out
}

// Backend is one task's address and port behind a VIP.
type Backend struct {
	Addr  netip.Addr
	Port  uint16
	State BackendState
	Task  string
	App   string
}

// AddrPort returns the backend's address and port.
func (b Backend) AddrPort() netip.AddrPort { return netip.AddrPortFrom(b.Addr, b.Port) }

// State is the desired state: every VIP with its address and backends, and
// the pools the addresses come from.
type State struct {
	VIPs        []VIP // sorted by Key
	Pool4       netip.Prefix
	Pool6       netip.Prefix
	Allocations Allocations // named VIP addresses, to persist
}

// Problem is something in the input that was skipped. It names the app and
// the label or task, so an operator can find it.
type Problem struct {
	App       string `json:"app,omitempty"`
	Framework string `json:"framework,omitempty"` // a Mesos framework's name (its id while the name is unknown)
	Label     string `json:"label,omitempty"`
	Task      string `json:"task,omitempty"`
	Reason    string `json:"reason"`
	// Refused is the address of an IP VIP that the guard refused (see
	// Guard), empty for other problems.
	Refused string `json:"refused,omitempty"`
}

func (p Problem) Error() string {
	s := "app " + p.App
	switch {
	case p.Framework != "" && p.App == "":
		s = "framework " + p.Framework
	case p.Framework != "":
		s += " framework " + p.Framework
	case p.App == "":
		s = "input"
	}
	if p.Label != "" {
		s += " label " + p.Label
	}
	if p.Task != "" {
		s += " task " + p.Task
	}
	return fmt.Sprintf("%s: %s", s, p.Reason)
}
