package storage_test

import (
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/storage"
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
		// zmq4's PUB writer that a closed socket can strand: one per closed
		// PUB socket of the tests' middletiers (testkit says why).
		testkit.PubWriterLeak,
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
