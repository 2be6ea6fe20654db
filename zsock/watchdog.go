package zsock

import "time"

// watchdog bounds one send at a time without a goroutine or an allocation
// per send: arm before the send, disarm after it. If the send is still under
// way when limit has passed, stall runs, once, on the timer's goroutine
// (it closes the socket, which frees the send); disarm then waits for stall
// to return, so that the timer's goroutine never outlives the sender.
type watchdog struct {
	limit time.Duration
	t     *time.Timer
	fired chan struct{} // stall has returned
}

func newWatchdog(limit time.Duration, stall func()) *watchdog {
	w := &watchdog{limit: limit, fired: make(chan struct{}, 1)}
	w.t = time.AfterFunc(time.Hour, func() {
		stall()
		w.fired <- struct{}{}
	})
	w.t.Stop()
	return w
}

func (w *watchdog) arm() { w.t.Reset(w.limit) }

// disarm reports whether the send stalled; if it did, stall has returned.
func (w *watchdog) disarm() bool {
	if w.t.Stop() {
		return false
	}
	<-w.fired
	return true
}
