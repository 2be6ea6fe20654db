package embedded_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/ingest-io/ingest/internal/testchild"
)

func TestMain(m *testing.M) {
	testchild.Act(map[string]func(string) int{
		tsdbCrashChildEnv: tsdbCrashChild,
		wblCutChildEnv:    wblCutChild,
		tornWALChildEnv:   tornWALChild,
	})
	goleak.VerifyTestMain(m)
}
