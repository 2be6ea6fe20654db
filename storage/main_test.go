package storage_test

import (
	"os"
	"testing"

	"github.com/ingest-io/ingest/storage"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(tsdbCrashChildEnv); dir != "" {
		os.Exit(tsdbCrashChild(dir))
	}
	if dir := os.Getenv(wblCutChildEnv); dir != "" {
		os.Exit(wblCutChild(dir))
	}
	if dir := os.Getenv(tornWALChildEnv); dir != "" {
		os.Exit(tornWALChild(dir))
	}
	goleak.VerifyTestMain(stopExtServersAfter{m},
		// zmq4 v0.17.0 loses the wake-up of a closed PUB socket's writer
		// goroutine if it was sending (pub.go, run); see middletier's tests.
		goleak.IgnoreAnyFunction("github.com/go-zeromq/zmq4.(*pubMWriter).run"),
	)
}

// stopExtServersAfter runs the tests, then stops the external store servers
// they started (extstore_test.go), before goleak looks.
type stopExtServersAfter struct{ m *testing.M }

func (s stopExtServersAfter) Run() int {
	code := s.m.Run()
	storage.StopExtServers()
	return code
}
