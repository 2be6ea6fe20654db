package middletier_test

import (
	"testing"

	"github.com/ingest-io/ingest/internal/testkit"
)

// zmq4's goroutines that a closed socket can strand, and nothing a caller
// can end: testkit names them and says why.
func TestMain(m *testing.M) { testkit.Main(m, testkit.PubWriterLeak, testkit.RouterReaderLeak) }
