package source

import (
	"context"

	"github.com/l4lb/l4lb/vip"
)

// List and watch (DESIGN section 8). A source delivers one full list, then
// deltas keyed by what changed, as Kubernetes informers do. The unit of
// change is a Group: everything one key of the source declares. Marathon
// keys groups by app id, Mesos by framework id and task id, etcd by VIP
// key. A group yields VIP declarations with their backends (vip.Decl); the
// pipeline groups declarations by VIP name (or IP) across every group of
// every source, so one VIP may be declared by many groups.

// Key names one group inside a source: "/web" for a Marathon app,
// "<framework-id>/<task-id>" for a Mesos task, the VIP key for etcd. Keys are
// unique within a source; the pipeline qualifies them with the source, so
// two sources may use the same key.
type Key string

// Group is what one key of a source declares now. A delivered Group is
// immutable: neither the source nor the pipeline changes it afterwards.
type Group struct {
	Key Key
	// Decls are the VIP declarations of the group, each with the backends
	// (address, port, state, task, app) the group gives that VIP. A group
	// without declarations is valid: it holds no VIP (a Marathon app
	// without VIP labels), but its problems still count.
	Decls []vip.Decl
	// Problems are what in this group was skipped (a malformed label, a
	// task without a host), each naming the app or framework and the
	// label or task.
	Problems []vip.Problem
}

// Sink is where a source delivers. The pipeline gives each source its own
// sink. Calls only record what changed and return at once (kube-proxy's
// change trackers); the pipeline recomputes on its own goroutine. They are
// safe to call from any goroutine, but a source calls them in the order
// the changes happened.
type Sink interface {
	// Replace delivers a full list: after it, the groups of this source are
	// exactly these; a key that the source held before and that is absent
	// here is gone. The first Replace of every source is what the pipeline
	// waits for before it writes anything to the kernel.
	Replace(groups []Group)
	// Update delivers deltas between lists: each group replaces the group
	// of its key (or adds it), each key in gone removes its group (an
	// unknown key is ignored). Updates before the first Replace are
	// recorded and applied on top of it.
	Update(changed []Group, gone []Key)
	// Stale says that the source cannot read (err), or reads again (nil)
	// after such an error. The pipeline keeps the last known groups of a
	// stale source and says so (l4lb_source_stale, /healthz); a source that
	// fails never empties the table.
	Stale(err error)
}

// Source is a list-and-watch source.
type Source interface {
	// String names the source in logs, without secrets.
	String() string
	// Run lists, delivers the list with Replace, then watches and delivers
	// deltas with Update until ctx is done. The source lists again on its
	// own whenever it cannot trust its deltas (a watch that broke, a
	// compacted revision, an event that names nothing usable) and when
	// Relist asks. cfg says how declarations are built (pools are not
	// needed: addresses are allocated by the pipeline). Run returns nil
	// when ctx is done, an error only when it cannot run at all; read
	// failures are reported with Sink.Stale and retried with backoff.
	Run(ctx context.Context, cfg vip.Config, sink Sink) error
	// Relist asks Run for a full list soon (the pipeline's --resync). It
	// never blocks; requests coalesce.
	Relist()
}

// Loader is a source that can also be read once, whole (for l4lb render).
type Loader interface {
	Load(ctx context.Context) (Snapshot, error)
}
