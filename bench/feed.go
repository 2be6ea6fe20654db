package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/coder/websocket"
)

// feedWatch follows every device on the live feed and records, per message,
// the time from the device's send to the dashboard's receipt.
type feedWatch struct {
	ws   *websocket.Conn
	hist *stats
	devs map[string]*device
	now  func() int64 // the load generator's clock, which stamps the sends
	done chan struct{}

	mu      sync.Mutex
	missed  int64
	shownN  int64
	unknown int64
	closing bool   // close was called: the end of the reads is the bench's
	ended   string // how the feed ended the connection, if it did
}

func watchFeed(ctx context.Context, url string, devs []*device, hist *stats, now func() int64) (*feedWatch, error) {
	ws, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		return nil, fmt.Errorf("dial live feed: %w", err)
	}
	ws.SetReadLimit(1 << 20)
	if err := ws.Write(ctx, websocket.MessageText, []byte(`{"type":"subscribe"}`)); err != nil {
		ws.CloseNow()
		return nil, fmt.Errorf("subscribe to live feed: %w", err)
	}
	w := &feedWatch{ws: ws, hist: hist, devs: map[string]*device{}, now: now, done: make(chan struct{})}
	for _, d := range devs {
		if d != nil {
			w.devs[d.id] = d
		}
	}
	go w.read()
	return w, nil
}

func (w *feedWatch) read() {
	defer close(w.done)
	for {
		_, b, err := w.ws.Read(context.Background())
		if err != nil {
			w.mu.Lock()
			if !w.closing {
				// The feed ended it (a dashboard too slow is closed with
				// 4000): what it showed stops there, and the report says so.
				w.ended = err.Error()
				var ce websocket.CloseError
				if errors.As(err, &ce) {
					w.ended = fmt.Sprintf("%d %s", int(ce.Code), ce.Reason)
				}
			}
			w.mu.Unlock()
			return
		}
		now := w.now()
		var f struct {
			Type    string `json:"type"`
			Device  string `json:"device"`
			Count   int64  `json:"count"`
			Payload struct {
				Seq int `json:"seq"`
			} `json:"payload"`
		}
		if json.Unmarshal(b, &f) != nil {
			continue
		}
		switch f.Type {
		case "missed":
			w.mu.Lock()
			w.missed += f.Count
			w.mu.Unlock()
		case "message":
			d := w.devs[f.Device]
			if d == nil {
				continue
			}
			var at int64
			d.mu.Lock()
			if i := f.Payload.Seq - 1; i >= 0 && i < len(d.sentAt) {
				at, d.sentAt[i] = d.sentAt[i], 0
			}
			d.mu.Unlock()
			ok := at != 0
			w.mu.Lock()
			if ok {
				w.shownN++
			} else {
				w.unknown++ // shown twice, or sent before the watch began
			}
			w.mu.Unlock()
			if ok {
				w.hist.record(d.idx, now-at)
			}
		}
	}
}

func (w *feedWatch) close() {
	w.mu.Lock()
	w.closing = true
	w.mu.Unlock()
	w.ws.Close(websocket.StatusNormalClosure, "")
	<-w.done
}
