// Package source reads the inputs of the desired state: Marathon app
// definitions from a file or from Marathon itself.
package source

import (
	"context"
	"fmt"
	"net/url"
	"strings"

	"github.com/l4lb/l4lb/vip"
)

// Snapshot is what a source held at one read.
type Snapshot struct {
	Apps     []vip.App
	Problems []vip.Problem // apps that did not decode; the rest are in Apps
}

// Parse turns a source spec into a source: "file:PATH" or "marathon:URL",
// with default Marathon options.
func Parse(spec string) (Source, error) {
	return ParseWith(spec, MarathonOptions{})
}

// ParseWith is Parse with the options of every marathon:URL source.
func ParseWith(spec string, marathon MarathonOptions) (Source, error) {
	kind, arg, ok := strings.Cut(spec, ":")
	if !ok || arg == "" {
		return nil, fmt.Errorf("source %q: want file:PATH or marathon:URL", spec)
	}
	switch kind {
	case "file":
		return NewFile(arg), nil
	case "marathon":
		m, err := NewMarathon(arg, marathon)
		if err != nil {
			return nil, fmt.Errorf("source %s: %w", redactSpec(kind, arg), err)
		}
		return m, nil
	}
	return nil, fmt.Errorf("source %q: unknown kind %q, want file:PATH or marathon:URL", spec, kind)
}

// LoadAll reads every source once and merges their apps (l4lb render). It
// fails when any source fails, or cannot be read whole, so that a partial
// read never replaces a whole state.
func LoadAll(ctx context.Context, sources []Source) (Snapshot, error) {
	var out Snapshot
	for _, s := range sources {
		l, ok := s.(Loader)
		if !ok {
			return Snapshot{}, fmt.Errorf("load %s: this source cannot be read whole", s)
		}
		snap, err := l.Load(ctx)
		if err != nil {
			return Snapshot{}, fmt.Errorf("load %s: %w", s, err)
		}
		out.Apps = append(out.Apps, snap.Apps...)
		out.Problems = append(out.Problems, snap.Problems...)
	}
	return out, nil
}

// redactSpec hides a password in a marathon:URL spec for error messages.
func redactSpec(kind, arg string) string {
	if u, err := url.Parse(arg); err == nil {
		return kind + ":" + u.Redacted()
	}
	return kind + ":(unparsable url)"
}
