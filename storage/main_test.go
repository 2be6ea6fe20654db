package storage_test

import (
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/ingest-io/ingest/internal/testkit"
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
	goleak.VerifyTestMain(m,
		// zmq4's PUB writer that a closed socket can strand: one per closed
		// PUB socket of the tests' middletiers (testkit says why).
		testkit.PubWriterLeak,
	)
}
