// Package netns creates and removes the network namespaces that l4lb's
// tests, demo and benchmarks run in, so that nothing touches the root
// namespace. Namespaces are created with iproute2 (ip netns add), entered
// either by a locked OS thread (Do) for in-process sockets, or with
// `ip netns exec` (Cmd) for external tools.
package netns

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/l4lb/l4lb/internal/nsenter"
)

// NS is a named network namespace created by this package.
type NS struct {
	Name string
}

var counter atomic.Uint32

// UniqueName returns a namespace name that no other test process of this
// machine uses at the same time: prefix, process id, a counter and random
// bits. Kept short: names also become interface and file names.
func UniqueName(prefix string) string {
	var b [2]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s%d-%d%s", prefix, os.Getpid(), counter.Add(1), hex.EncodeToString(b[:]))
}

// New creates the namespace name with its loopback up and IPv6 duplicate
// address detection off for the interfaces created in it later: a router
// solicits neighbours for forwarded packets from its link-local address,
// and cannot while that address is tentative (a second or two after the
// link comes up), which delays forwarded IPv6 at random.
func New(name string) (*NS, error) {
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %v: %s", name, err, bytes.TrimSpace(out))
	}
	n := &NS{Name: name}
	if _, err := n.Run("ip", "link", "set", "lo", "up"); err != nil {
		n.Delete()
		return nil, err
	}
	if _, err := n.Run("sysctl", "-q", "-w", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"); err != nil {
		n.Delete()
		return nil, err
	}
	return n, nil
}

// Path is the namespace's bind mount, usable as a file descriptor source.
func (n *NS) Path() string { return filepath.Join("/var/run/netns", n.Name) }

// Open returns a file referring to the namespace; the caller closes it.
func (n *NS) Open() (*os.File, error) {
	f, err := os.Open(n.Path())
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", n.Name, err)
	}
	return f, nil
}

// Delete kills every process still in the namespace and removes it.
func (n *NS) Delete() error {
	if out, err := exec.Command("ip", "netns", "pids", n.Name).Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	if out, err := exec.Command("ip", "netns", "del", n.Name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns del %s: %v: %s", n.Name, err, bytes.TrimSpace(out))
	}
	return nil
}

// Cmd returns a command that runs inside the namespace.
func (n *NS) Cmd(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Run runs a command inside the namespace and returns its standard output;
// the error carries the command and its standard error.
func (n *NS) Run(name string, args ...string) (string, error) {
	cmd := n.Cmd(context.Background(), name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("netns %s: %s %s: %v: %s", n.Name, name, strings.Join(args, " "),
			err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.String(), nil
}

// RunStdin is Run with data on standard input, for `nft -f -`.
func (n *NS) RunStdin(stdin []byte, name string, args ...string) (string, error) {
	cmd := n.Cmd(context.Background(), name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(stdin), &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("netns %s: %s %s: %v: %s", n.Name, name, strings.Join(args, " "),
			err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.String(), nil
}

// Do runs fn on an OS thread switched into the namespace. Sockets created
// inside fn stay in the namespace after Do returns, so servers can be
// created in Do and served from ordinary goroutines. fn must not start
// goroutines that expect to be in the namespace.
func (n *NS) Do(fn func() error) error {
	target, err := n.Open()
	if err != nil {
		return err
	}
	defer target.Close()
	return nsenter.Do(int(target.Fd()), fn)
}

// Sysctl sets a sysctl inside the namespace, e.g. "net.ipv4.ip_forward" "1".
func (n *NS) Sysctl(key, value string) error {
	_, err := n.Run("sysctl", "-q", "-w", key+"="+value)
	return err
}

// Veth connects namespace a (interface aIf) to namespace b (interface bIf)
// with a veth pair created directly inside the namespaces, so that no
// interface ever appears in the root namespace. Both ends are brought up.
func Veth(a *NS, aIf string, b *NS, bIf string) error {
	if _, err := a.Run("ip", "link", "add", aIf, "type", "veth", "peer", "name", bIf, "netns", b.Name); err != nil {
		return err
	}
	if _, err := a.Run("ip", "link", "set", aIf, "up"); err != nil {
		return err
	}
	_, err := b.Run("ip", "link", "set", bIf, "up")
	return err
}

// Addr adds addresses (CIDR notation) to an interface of the namespace;
// IPv6 addresses skip duplicate address detection so they work at once.
func (n *NS) Addr(ifname string, cidrs ...string) error {
	for _, c := range cidrs {
		args := []string{"addr", "add", c, "dev", ifname}
		if strings.Contains(c, ":") {
			args = append([]string{"-6"}, append(args, "nodad")...)
		}
		if _, err := n.Run("ip", args...); err != nil {
			return err
		}
	}
	return nil
}

func runIP(args ...string) (string, error) {
	out, err := exec.Command("ip", args...).CombinedOutput()
	return string(out), err
}
