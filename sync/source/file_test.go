package source

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestFileLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "apps.json")
	f := NewFile(path)
	if _, err := f.Load(context.Background()); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("missing file: %v", err)
	}
	os.WriteFile(path, []byte(`{"apps": [{"id": "/a"}, {"id": 7}]}`), 0o644)
	snap, err := f.Load(context.Background())
	if err != nil || len(snap.Apps) != 1 || len(snap.Problems) != 1 {
		t.Errorf("load: %+v %v", snap, err)
	}
	os.WriteFile(path, []byte(`{"apps": [`), 0o644)
	if _, err := f.Load(context.Background()); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("truncated file: error %v does not name the file", err)
	}
}

func TestFileWatch(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "apps.json")
	os.WriteFile(path, []byte(`{"apps": []}`), 0o644)
	f := &File{Path: path, Poll: 10 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	changes := make(chan struct{}, 10)
	done := make(chan error)
	go func() { done <- f.Watch(ctx, func() { changes <- struct{}{} }) }()
	expect := func(what string) {
		t.Helper()
		select {
		case <-changes:
		case <-time.After(2 * time.Second):
			t.Fatalf("%s: no change reported", what)
		}
	}
	time.Sleep(30 * time.Millisecond)
	os.WriteFile(path, []byte(`{"apps": [{"id": "/a"}]}`), 0o644)
	expect("in-place write")
	tmp := filepath.Join(dir, "tmp")
	os.WriteFile(tmp, []byte(`{"apps": [{"id": "/b"}]}`), 0o644)
	os.Rename(tmp, path)
	expect("atomic rename")
	os.Remove(path)
	expect("removal")
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Watch: %v", err)
	}
}
