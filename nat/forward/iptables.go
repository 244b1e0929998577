package forward

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"strings"
	"sync"

	ipt "github.com/coreos/go-iptables/iptables"

	"github.com/l4lb/l4lb/internal/nsenter"
)

// This is the only file of the package that runs iptables.
//
// Both iptables backends are looked after, because both see forwarded
// packets: iptables-nft (tables `ip filter` and `ip6 filter` in nftables)
// and iptables-legacy (x_tables). Docker uses whichever `iptables` points
// to; containerised tools bring their own. Each is driven through its own
// binary (iptables-nft, iptables-legacy and the ip6tables twins; a system
// with only a plain `iptables` is sorted by what `iptables --version`
// says). Listing a chain with iptables-nft changes nothing, but with
// iptables-legacy it creates the legacy filter table; so a legacy table is
// read only when /proc/net/ip_tables_names says it exists. A missing binary
// means there is nothing of that kind to coexist with; a legacy table in use
// without its binary is reported in Result.Unchecked.

var (
	_ tables    = (*ipt.IPTables)(nil)
	_ Interface = (*Kernel)(nil)
)

// lockWait bounds the wait for the xtables lock (legacy backend), in
// seconds, so that a stuck iptables user cannot stall the sync loop.
const lockWait = 10

// Kernel adds and removes l4lb's rules with the iptables binaries.
type Kernel struct {
	netnsFd int
	inNS    bool

	mu       sync.Mutex
	backends []*backend
	found    bool              // every backend's binary was found
	versions map[string]string // `--version` of plain binaries, by path
}

// Option configures a Kernel.
type Option func(*Kernel)

// WithNetNS makes the Kernel act in the network namespace behind fd instead
// of the current one (tests): iptables then runs from an OS thread switched
// into that namespace, and inherits it.
func WithNetNS(fd int) Option { return func(k *Kernel) { k.netnsFd, k.inNS = fd, true } }

// New returns a Kernel. It runs nothing yet: binaries are looked up at the
// first Sync or Cleanup (and again later while some are missing).
func New(opts ...Option) *Kernel {
	k := &Kernel{}
	for _, o := range opts {
		o(k)
	}
	for _, v6 := range []bool{false, true} {
		for _, legacy := range []bool{false, true} {
			b := &backend{name: backendName(v6, legacy), v6: v6}
			if legacy {
				b.present = legacyPresent(v6)
			}
			k.backends = append(k.backends, b)
		}
	}
	return k
}

// Sync implements Interface.
func (k *Kernel) Sync(ctx context.Context, want Want) (Result, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	var res Result
	err := k.do(func() error {
		// A binary that fails keeps only its own backend out.
		derr := k.discover()
		var err error
		res, err = syncAll(ctx, k.backends, want)
		return errors.Join(derr, err)
	})
	return res, err
}

// Cleanup implements Interface.
func (k *Kernel) Cleanup(ctx context.Context) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.do(func() error {
		return errors.Join(k.discover(), cleanupAll(ctx, k.backends))
	})
}

// discover finds the binaries of the backends that have none yet.
func (k *Kernel) discover() error {
	if k.found {
		return nil
	}
	var errs []error
	found := true
	for _, b := range k.backends {
		if b.t != nil {
			continue
		}
		legacy := b.present != nil
		path, err := k.binaryFor(b.v6, legacy)
		if err != nil {
			errs = append(errs, err)
		}
		if path == "" {
			found = false
			continue
		}
		t, err := ipt.New(ipt.IPFamily(family(b.v6)), ipt.Path(path), ipt.Timeout(lockWait))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %s: %w", b.name, path, err))
			found = false
			continue
		}
		b.t = t
	}
	k.found = found
	return errors.Join(errs...)
}

func family(v6 bool) ipt.Protocol {
	if v6 {
		return ipt.ProtocolIPv6
	}
	return ipt.ProtocolIPv4
}

// binaryFor finds the binary of a backend: iptables-nft or iptables-legacy
// (ip6tables-...), else a plain iptables of that mode; "" when there is
// none.
func (k *Kernel) binaryFor(v6, legacy bool) (string, error) {
	if path, err := exec.LookPath(backendName(v6, legacy)); err == nil {
		return path, nil
	}
	path, err := exec.LookPath(base(v6))
	if err != nil {
		return "", nil
	}
	version, ok := k.versions[path]
	if !ok {
		out, err := exec.Command(path, "--version").Output()
		if err != nil {
			return "", fmt.Errorf("%s --version: %w", path, err)
		}
		version = string(out)
		if k.versions == nil {
			k.versions = map[string]string{}
		}
		k.versions[path] = version
	}
	// "iptables v1.8.9 (nf_tables)" or "iptables v1.8.9 (legacy)"; before
	// 1.8 there was only legacy and no mode in parentheses.
	if strings.Contains(version, "nf_tables") != legacy {
		return path, nil
	}
	return "", nil
}

// legacyPresent reports whether the legacy filter table of the family
// exists in the calling thread's network namespace, without creating it.
func legacyPresent(v6 bool) func() (bool, error) {
	file := "/proc/thread-self/net/ip_tables_names"
	if v6 {
		file = "/proc/thread-self/net/ip6_tables_names"
	}
	return func() (bool, error) {
		data, err := os.ReadFile(file)
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil // no legacy iptables in this kernel
		}
		if err != nil {
			return false, fmt.Errorf("read %s: %w", file, err)
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		for sc.Scan() {
			if strings.TrimSpace(sc.Text()) == tableFilter {
				return true, nil
			}
		}
		return false, nil
	}
}

// do runs fn in the Kernel's network namespace: on this OS thread, switched
// into the namespace for the duration, so that the iptables processes fn
// starts are born there and /proc/thread-self/net describes it.
func (k *Kernel) do(fn func() error) error {
	if !k.inNS {
		return fn()
	}
	return nsenter.Do(k.netnsFd, fn)
}
