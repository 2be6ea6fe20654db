package command_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/ingest-io/ingest/internal/testkit"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// zmq4's goroutines that a closed socket can strand, and nothing a
		// caller can end: testkit names them and says why.
		testkit.PubWriterLeak, testkit.RouterReaderLeak,
	)
}
