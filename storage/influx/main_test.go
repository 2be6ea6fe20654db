package influx

import (
	"testing"

	"github.com/ingest-io/ingest/internal/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }
