package feed_test

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// zmq4 v0.17.0: pubMWriter.Close signals its writer goroutine once;
		// if the writer is sending at that moment the signal is lost and it
		// waits on its condition variable for good (pub.go, run). One
		// goroutine per closed PUB socket of the test's middletiers.
		goleak.IgnoreAnyFunction("github.com/go-zeromq/zmq4.(*pubMWriter).run"),
	)
}
