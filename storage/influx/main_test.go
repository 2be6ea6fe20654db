package influx

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/ingest-io/ingest/internal/testkit"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(stopStoresAfter{m})
}

// stopStoresAfter runs the tests, then stops the external store servers
// they started, before goleak looks.
type stopStoresAfter struct{ m *testing.M }

func (s stopStoresAfter) Run() int {
	code := s.m.Run()
	testkit.StopStores()
	return code
}
