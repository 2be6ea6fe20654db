package dirlock_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/ingest-io/ingest/internal/dirlock"
	"github.com/ingest-io/ingest/internal/testchild"
)

const childEnv = "DIRLOCK_TEST_CHILD"

// TestMain acts as the child of TestHeldByAnotherProcess when its variable
// is set: it takes the lock, says so, and holds it until killed.
func TestMain(m *testing.M) {
	if path := os.Getenv(childEnv); path != "" {
		if _, err := dirlock.Lock(path); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println("locked")
		select {}
	}
	os.Exit(m.Run())
}

// A lock held by another process is refused with that process's id; once
// the holder is killed, the lock is free again and names the new holder.
func TestHeldByAnotherProcess(t *testing.T) {
	path := filepath.Join(t.TempDir(), "LOCK")
	child, _, _ := testchild.Start(t, nil, "holder", "locked", childEnv+"="+path)
	_, err := dirlock.Lock(path)
	var held *dirlock.HeldError
	if !errors.As(err, &held) || !errors.Is(err, dirlock.ErrLocked) {
		child.Process.Kill()
		child.Wait()
		t.Fatalf("Lock while another process holds it: %v, want a HeldError wrapping ErrLocked", err)
	}
	if held.PID != child.Process.Pid || held.Path != path {
		t.Errorf("held by %+v, want pid %d at %s", held, child.Process.Pid, path)
	}
	if want := fmt.Sprintf("dirlock: %s held by pid %d", path, child.Process.Pid); err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}

	child.Process.Signal(syscall.SIGKILL)
	child.Wait()
	f, err := dirlock.Lock(path)
	if err != nil {
		t.Fatalf("Lock after the holder died: %v", err)
	}
	defer f.Close()
	b, err := os.ReadFile(path)
	if err != nil || string(b) != fmt.Sprintf("%d\n", os.Getpid()) {
		t.Errorf("lock file holds %q (%v), want this process's id", b, err)
	}
	// A second open in the same process is refused too, and named.
	if _, err := dirlock.Lock(path); !errors.As(err, &held) || held.PID != os.Getpid() {
		t.Errorf("second Lock in the holder: %v, want held by pid %d", err, os.Getpid())
	}
}

// A lock file that names no process (written by nobody yet, or damaged)
// still refuses, without a pid.
func TestHeldWithoutPID(t *testing.T) {
	path := filepath.Join(t.TempDir(), "LOCK")
	f, err := dirlock.Lock(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := os.WriteFile(path, []byte("garbage"), 0o640); err != nil {
		t.Fatal(err)
	}
	_, err = dirlock.Lock(path)
	var held *dirlock.HeldError
	if !errors.As(err, &held) || held.PID != 0 || err.Error() != "dirlock: "+path+" held by another open" {
		t.Errorf("Lock: %v, want held without a pid", err)
	}
}
