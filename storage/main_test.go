package storage_test

import (
	"testing"

	"github.com/ingest-io/ingest/internal/testkit"
)

// zmq4's PUB writer that a closed socket can strand: one per closed PUB
// socket of the tests' middletiers (testkit says why).
func TestMain(m *testing.M) { testkit.Main(m, testkit.PubWriterLeak) }
