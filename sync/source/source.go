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
	Decls    []vip.Decl    // declarations of the tasks of a Mesos state
	Groups   []Group       // the same, by task, for the pipeline
	Problems []vip.Problem // apps that did not decode; the rest are in Apps
}

// Parse turns a source spec into a source: "file:PATH", "marathon:URL" or
// "mesos:URL", with default options.
func Parse(spec string) (Source, error) {
	return ParseWithOptions(spec, Options{})
}

// ParseWith is Parse with the options of every marathon:URL source.
func ParseWith(spec string, marathon MarathonOptions) (Source, error) {
	return ParseWithOptions(spec, Options{Marathon: marathon})
}

// Options are the options of every kind of source.
type Options struct {
	Marathon MarathonOptions
	Mesos    MesosOptions
	// Model gives the domain and the resolver of agent host names to the
	// sources that build declarations themselves (a Mesos state in a file,
	// mesos:URL), unless MesosOptions.Model is set.
	Model vip.Config
}

const specKinds = "file:PATH, marathon:URL or mesos:URL"

// ParseWithOptions is Parse with options.
func ParseWithOptions(spec string, o Options) (Source, error) {
	kind, arg, ok := strings.Cut(spec, ":")
	if !ok || arg == "" {
		return nil, fmt.Errorf("source %q: want %s", spec, specKinds)
	}
	switch kind {
	case "file":
		f := NewFile(arg)
		f.Model = o.Model
		return f, nil
	case "marathon":
		m, err := NewMarathon(arg, o.Marathon)
		if err != nil {
			return nil, fmt.Errorf("source %s: %w", redactSpec(kind, arg), err)
		}
		return m, nil
	case "mesos":
		mo := o.Mesos
		if mo.Model.Domain == "" && mo.Model.Resolver == nil {
			mo.Model = o.Model
		}
		m, err := NewMesos(arg, mo)
		if err != nil {
			return nil, fmt.Errorf("source %s: %w", redactSpec(kind, arg), err)
		}
		return m, nil
	}
	return nil, fmt.Errorf("source %q: unknown kind %q, want %s", spec, kind, specKinds)
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
		out.Decls = append(out.Decls, snap.Decls...)
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
