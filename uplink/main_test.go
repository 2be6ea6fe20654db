package uplink_test

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// zmq4 v0.17.0 loses the wake-up of a closed PUB socket's writer
		// goroutine if it was sending (pub.go, run), and a closed ROUTER's
		// reader goroutine can wait for good to queue one more message
		// (router.go, listen); see middletier's tests and doc.go.
		goleak.IgnoreAnyFunction("github.com/go-zeromq/zmq4.(*pubMWriter).run"),
		goleak.IgnoreAnyFunction("github.com/go-zeromq/zmq4.(*routerQReader).listen"),
	)
}
