// Package testchild starts the running test binary again as a child
// process, for tests that kill a process at a chosen or random moment and
// then check what it left on disk. The child runs no tests: the package's
// TestMain sees the environment the parent added and acts as the child.
package testchild

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"syscall"
	"testing"
)

// Start runs the test binary again with env added, under wrap if it is not
// nil (a command and its flags, such as strace), and waits for the child's
// first line on stdout to be first; what names the child in a failure. The
// child is killed if the test process dies first. It returns the child,
// the scanner of the rest of its stdout, and its stderr.
func Start(t testing.TB, wrap []string, what, first string, env ...string) (*exec.Cmd, *bufio.Scanner, *bytes.Buffer) {
	t.Helper()
	argv := append(append([]string{}, wrap...), os.Args[0], "-test.run=^$")
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr := new(bytes.Buffer)
	cmd.Stderr = stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	if !sc.Scan() || sc.Text() != first {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("%s: child did not start: %s", what, stderr.String())
	}
	return cmd, sc, stderr
}

// Act is the first thing a TestMain does: when the environment names one
// of children (by its variable, whose value is the child's directory),
// the process is that child, and Act runs it and exits with its code.
// Otherwise it returns and the tests run.
func Act(children map[string]func(dir string) int) {
	for env, child := range children {
		if dir := os.Getenv(env); dir != "" {
			os.Exit(child(dir))
		}
	}
}
