package middletier_test

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// zmq4 v0.17.0: pubMWriter.Close signals its writer goroutine once;
		// if the writer is sending at that moment the signal is lost and it
		// waits on its condition variable for good (pub.go, run). Nothing a
		// caller does can end it: one goroutine per closed PUB socket.
		goleak.IgnoreAnyFunction("github.com/go-zeromq/zmq4.(*pubMWriter).run"),
		// zmq4 v0.17.0: a ROUTER's reader goroutine for one connection
		// sends each message it reads into the socket's queue of ten with
		// no way out (router.go, listen); closed while that queue is full
		// and the peer still sending, it waits there for good.
		goleak.IgnoreAnyFunction("github.com/go-zeromq/zmq4.(*routerQReader).listen"),
	)
}
