package source

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/l4lb/l4lb/vip"
)

// File is a JSON file of Marathon apps: what GET /v2/apps?embed=apps.tasks
// returns, a single app, or an array of apps.
type File struct {
	Path string
	// Poll is how often Watch looks at the file; 200ms when zero.
	Poll time.Duration

	relist atomic.Bool
}

// NewFile returns the source for path.
func NewFile(path string) *File { return &File{Path: path} }

func (f *File) String() string { return "file:" + f.Path }

// Load reads and parses the file. A file that is not JSON of the expected
// shape is an error; apps inside it that do not decode are problems.
func (f *File) Load(ctx context.Context) (Snapshot, error) {
	data, err := os.ReadFile(f.Path)
	if err != nil {
		return Snapshot{}, fmt.Errorf("read apps: %w", err)
	}
	apps, problems, err := vip.ParseApps(data)
	if err != nil {
		return Snapshot{}, fmt.Errorf("parse %s: %w", f.Path, err)
	}
	return Snapshot{Apps: apps, Problems: problems}, nil
}

// Relist implements Source: the file is read again at the next poll.
func (f *File) Relist() { f.relist.Store(true) }

// Run implements Source. A file is a full list every time it changes:
// it is read at start, whenever its stat changes and when Relist asks, and
// delivered with Replace (the pipeline diffs it per app, so an app that did
// not change costs nothing downstream). A file that cannot be read or
// parsed is reported with Stale and the last good list is kept.
func (f *File) Run(ctx context.Context, cfg vip.Config, sink Sink) error {
	groups := newAppGroups(cfg)
	poll := f.Poll
	if poll == 0 {
		poll = 200 * time.Millisecond
	}
	var last []byte
	stale := false
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		fp := f.fingerprint()
		if last == nil || !bytes.Equal(fp, last) || f.relist.Swap(false) {
			snap, err := f.Load(ctx)
			switch {
			case err != nil:
				sink.Stale(err)
				stale = true
			default:
				sink.Replace(groups.list(snap.Apps, snap.Problems))
				if stale {
					stale = false
					sink.Stale(nil)
				}
			}
			last = fp
			if err != nil {
				last = []byte("failed") // read again at the next poll
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Watch polls the file's stat and calls changed when the file changes. It
// returns when ctx is done.
func (f *File) Watch(ctx context.Context, changed func()) error {
	poll := f.Poll
	if poll == 0 {
		poll = 200 * time.Millisecond
	}
	last := f.fingerprint()
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if fp := f.fingerprint(); !bytes.Equal(fp, last) {
				last = fp
				changed()
			}
		}
	}
}

// fingerprint identifies the file's current version by its stat: inode,
// size and the modification and change times (nanoseconds), so that atomic
// renames and in-place writes both show, and appearing or vanishing too.
func (f *File) fingerprint() []byte {
	fi, err := os.Stat(f.Path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return []byte("missing")
		}
		return []byte("error: " + err.Error())
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Appendf(nil, "%d %d", fi.Size(), fi.ModTime().UnixNano())
	}
	return fmt.Appendf(nil, "%d %d %d %d.%d %d.%d", st.Dev, st.Ino, st.Size,
		st.Mtim.Sec, st.Mtim.Nsec, st.Ctim.Sec, st.Ctim.Nsec)
}
