package embedded_test

import (
	"os"
	"testing"

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
	goleak.VerifyTestMain(m)
}
