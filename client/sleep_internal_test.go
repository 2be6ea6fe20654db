package client

import (
	"sync"
	"testing"
	"time"
)

// TestSleepWakes: the reconnect backoff ends when its time is up even when
// nothing else happens on the client. An earlier sleep compared the clock
// with a deadline computed after its timer started; the timer's broadcast
// could come first and be lost, and a client with no further Send stayed
// asleep, so Flush never returned (seen after the last kill of the pipeline
// test). Short sleeps make that window likely: it failed within the first
// hundred iterations under -race.
func TestSleepWakes(t *testing.T) {
	c := &Client{}
	c.cond = sync.NewCond(&c.mu)
	for i := range 5000 {
		d := time.Duration(i%50) * 100 * time.Nanosecond
		done := make(chan struct{})
		go func() { c.sleep(d); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("sleep(%v) did not return (iteration %d)", d, i)
		}
	}
}

// TestSleepEndsOnClose: Close ends a sleep at once.
func TestSleepEndsOnClose(t *testing.T) {
	c := &Client{}
	c.cond = sync.NewCond(&c.mu)
	done := make(chan bool)
	go func() { done <- c.sleep(time.Hour) }()
	time.Sleep(10 * time.Millisecond)
	c.mu.Lock()
	c.closed = true
	c.cond.Broadcast()
	c.mu.Unlock()
	select {
	case ok := <-done:
		if ok {
			t.Fatal("sleep reported the client open after Close")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("sleep did not end on close")
	}
}
