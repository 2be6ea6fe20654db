package sinkhttp

import (
	"bytes"
	"io"
	"net/http"
	"strconv"
	"testing"
	"time"
)

// FuzzReadAnswer: whatever a store answers, readAnswer keeps a failure's
// status, the start of its body and a Retry-After in seconds as they were
// sent, keeps nothing of a success, never waits a negative time, and
// reads the body to its end when it is not too long.
func FuzzReadAnswer(f *testing.F) {
	f.Add(204, "", []byte(nil))
	f.Add(400, "", []byte(`{"error":"partial write: points beyond retention policy dropped=3"}`))
	f.Add(429, "1", []byte("slow down"))
	f.Add(503, "Wed, 21 Oct 2015 07:28:00 GMT", []byte("busy"))
	f.Add(500, "-5", bytes.Repeat([]byte("x"), maxErrorBody+10))
	f.Add(429, "9223372037", []byte(""))
	var buf []byte
	f.Fuzz(func(t *testing.T, status int, retryAfter string, body []byte) {
		r := bytes.NewReader(body)
		resp := &http.Response{StatusCode: status, Header: http.Header{}, Body: io.NopCloser(r)}
		if retryAfter != "" {
			resp.Header.Set("Retry-After", retryAfter)
		}
		var a Answer
		var err error
		a, buf, err = readAnswer(resp, buf)
		if err != nil {
			t.Fatal(err)
		}
		if a.Status != status {
			t.Fatalf("status %d, sent %d", a.Status, status)
		}
		if a.RetryAfter < 0 {
			t.Fatalf("Retry-After %q: wait %v", retryAfter, a.RetryAfter)
		}
		if status/100 == 2 {
			if a.Body != nil || a.RetryAfter != 0 {
				t.Fatalf("success %d kept %q, wait %v", status, a.Body, a.RetryAfter)
			}
		} else {
			if want := body[:min(len(body), maxErrorBody)]; !bytes.Equal(a.Body, want) {
				t.Fatalf("body %d bytes kept, want the first %d of %d", len(a.Body), len(want), len(body))
			}
			secs, perr := strconv.Atoi(resp.Header.Get("Retry-After"))
			if (a.RetryAfter > 0) != (perr == nil && secs > 0) {
				t.Fatalf("Retry-After %q: wait %v", retryAfter, a.RetryAfter)
			}
			if perr == nil && secs > 0 && secs < 1<<32 && a.RetryAfter != time.Duration(secs)*time.Second {
				t.Fatalf("Retry-After %q: wait %v", retryAfter, a.RetryAfter)
			}
		}
		if len(body) <= maxErrorBody+1<<20 && r.Len() != 0 {
			t.Fatalf("%d bytes of the body left unread", r.Len())
		}
	})
}
