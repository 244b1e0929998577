// Package nsenter runs a function on an OS thread switched into a network
// namespace, for code that must create sockets or start processes there.
package nsenter

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// Do runs fn on this goroutine's OS thread, switched into the network
// namespace that fd refers to, and switches back. Sockets created and
// processes started inside fn belong to that namespace. If switching back
// fails, the thread stays locked so that the runtime discards it when the
// goroutine ends.
func Do(fd int, fn func() error) error {
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open current netns: %w", err)
	}
	defer orig.Close()
	if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns: %w", err)
	}
	ferr := fn()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		return errors.Join(ferr, fmt.Errorf("restore netns: %w", err))
	}
	runtime.UnlockOSThread()
	return ferr
}
