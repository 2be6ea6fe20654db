package storage_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/ingest-io/ingest/internal/testkit"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// zmq4's PUB writer that a closed socket can strand: one per closed
		// PUB socket of the tests' middletiers (testkit says why).
		testkit.PubWriterLeak,
	)
}
