package frontend

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// The load generator speaks just enough RFC 6455 for a device that sends
// text frames and reads acks, over plain TCP. It does not use
// coder/websocket, so that its own cost per frame is low and known: one
// write syscall per frame (or per group of frames, with Coalesce), one read
// per group of acks, and no goroutine hand-off between a connection's
// reading and its sending. On this 2-core machine the generator shares the
// CPU with the server it measures, so every microsecond it spends is one
// the server does not get.

// loadSpec describes a device fleet for the load generator.
type loadSpec struct {
	Addr     string        // server host:port
	Conns    int           // connections
	Window   int           // frames in flight per connection
	Rate     float64       // frames per second per connection; 0 = as fast as the window allows
	Size     int           // message size in bytes
	Duration time.Duration // how long to send
	Total    int64         // or: stop after this many frames in all (when > 0)
	Warmup   time.Duration // frames sent this early are acked but not in the quantiles
	// Coalesce writes all the frames a connection has ready (after an ack
	// freed several window slots) with one write syscall, as a device with
	// a queue would; each frame still holds one message. Without it every
	// frame is its own write, as coder/websocket and the client package do.
	Coalesce bool
	Pacers   int // goroutines pacing a Rate-limited fleet; default 4
}

type loadResult struct {
	Acked    int64
	Measured int64 // frames in the quantiles (sent after the warm-up)
	Elapsed  time.Duration
	P50, P99 time.Duration
	P999     time.Duration
	Max      time.Duration
	Errors   int64
	Skipped  int64         // paced sends skipped because the window was full
	PaceP99  time.Duration // how late the pacers wrote, vs the schedule
	Seconds  []secStat     // per second of sending, by send time
	Proc     []string      // per-second runtime stats of the generator
}

// secStat summarises the latencies of the frames sent in one second of the run.
type secStat struct {
	N             int
	P50, P99, Max time.Duration
}

// loadConn is one device connection.
type loadConn struct {
	nc  net.Conn
	br  *bufio.Reader
	wmu sync.Mutex // pacer writes vs the reader's pong and close writes
	out []byte     // frames being written; guarded by wmu

	mu      sync.Mutex
	sentAt  []int64 // unix nanos of frame seq-1 when written
	acked   uint64  // highest seq acknowledged
	samples []sample
}

type sample struct{ at, lat time.Duration } // since start; ack latency

// dialLoad opens a WebSocket connection for device id.
func dialLoad(addr, device string) (*loadConn, error) {
	nc, err := net.DialTimeout("tcp", addr, 30*time.Second)
	if err != nil {
		return nil, err
	}
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	var key [16]byte
	rand.Read(key[:])
	req := "GET /v1/ingest?device=" + device + " HTTP/1.1\r\nHost: " + addr +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " +
		fmt.Sprintf("%x", key[:])[:22] + "==\r\n\r\n"
	if _, err := io.WriteString(nc, req); err != nil {
		nc.Close()
		return nil, err
	}
	br := bufio.NewReaderSize(nc, 4096)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		nc.Close()
		return nil, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		nc.Close()
		return nil, fmt.Errorf("handshake: HTTP %d", resp.StatusCode)
	}
	nc.SetDeadline(time.Time{})
	return &loadConn{nc: nc, br: br}, nil
}

// appendFrame appends a masked client frame. The mask is fixed: it only has
// to exist, not to be secret, and this keeps the generator cheap.
func appendFrame(dst []byte, op byte, p []byte) []byte {
	mask := [4]byte{0x12, 0x34, 0x56, 0x78}
	dst = append(dst, 0x80|op)
	switch n := len(p); {
	case n < 126:
		dst = append(dst, 0x80|byte(n))
	case n <= 0xffff:
		dst = append(dst, 0x80|126)
		dst = binary.BigEndian.AppendUint16(dst, uint16(n))
	default:
		dst = append(dst, 0x80|127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	dst = append(dst, mask[:]...)
	for i, b := range p {
		dst = append(dst, b^mask[i&3])
	}
	return dst
}

// readFrame reads one server frame (servers do not mask) into buf.
func (c *loadConn) readFrame(buf []byte) (op byte, p []byte, err error) {
	var h [2]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		return 0, nil, err
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var e [2]byte
		if _, err := io.ReadFull(c.br, e[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(e[:]))
	case 127:
		var e [8]byte
		if _, err := io.ReadFull(c.br, e[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(e[:])
	}
	if h[0]&0x80 == 0 || n > 1<<20 {
		return 0, nil, fmt.Errorf("unexpected frame header % x", h)
	}
	buf = slices.Grow(buf[:0], int(n))[:n]
	if _, err := io.ReadFull(c.br, buf); err != nil {
		return 0, nil, err
	}
	return h[0] & 0x0f, buf, nil
}

// runLoad drives spec.Conns devices (no auth: the server runs with
// InsecureNoAuth on loopback) and measures each frame's ack latency, from
// just before the write syscall that sends it to just after the read that
// returns the ack covering it. The generator's own delay in waking up for
// the ack is therefore included; its pacing delay (how late a paced frame
// is written) is not, and is reported apart as PaceP99.
func runLoad(spec loadSpec) (loadResult, error) {
	var (
		errs    atomic.Int64
		skipped atomic.Int64
		budget  atomic.Int64 // frames left to send when Total > 0
		acked   atomic.Int64
		written atomic.Int64 // frames written
		closing atomic.Bool  // the generator is closing the connections
		lastAck atomic.Int64 // unix nanos of the latest ack read
		wg      sync.WaitGroup
		conns   = make([]*loadConn, spec.Conns)
		dialSem = make(chan struct{}, 64)
	)
	budget.Store(spec.Total)
	for i := range conns {
		wg.Go(func() {
			dialSem <- struct{}{}
			defer func() { <-dialSem }()
			c, err := dialLoad(spec.Addr, "dev-"+strconv.Itoa(i))
			if err != nil {
				fmt.Fprintf(os.Stderr, "dial: %v\n", err)
				errs.Add(1)
				return
			}
			conns[i] = c
		})
	}
	wg.Wait()
	if n := errs.Load(); n > 0 {
		for _, c := range conns {
			if c != nil {
				c.nc.Close()
			}
		}
		return loadResult{}, fmt.Errorf("%d dials failed", n)
	}

	pad := bytes.Repeat([]byte("x"), max(spec.Size-len(`{"id":"0000000000","v":1.25,"p":""}`), 0))
	message := func(dst []byte, n int) []byte {
		var num [20]byte
		d := strconv.AppendInt(num[:0], int64(n), 10)
		dst = append(dst, `{"id":"`...)
		dst = append(dst, "0000000000"[:max(10-len(d), 0)]...)
		dst = append(dst, d...)
		dst = append(dst, `","v":1.25,"p":"`...)
		dst = append(dst, pad...)
		return append(dst, `"}`...)
	}

	start := time.Now()
	stopAt := start.Add(spec.Duration)
	warm := start.Add(spec.Warmup).UnixNano()
	procStop, procDone := make(chan struct{}), make(chan struct{})
	var procLines []string
	go func() {
		defer close(procDone)
		ps := newProcStats(nil)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				procLines = append(procLines, ps.line())
			case <-procStop:
				return
			}
		}
	}()

	// take reserves one frame of the budget.
	take := func() bool {
		if spec.Total > 0 {
			return budget.Add(-1) >= 0
		}
		return time.Now().Before(stopAt)
	}
	// send writes up to n new frames on c, coalesced or one per write.
	var msgBuf sync.Pool
	msgBuf.New = func() any { b := make([]byte, 0, spec.Size+64); return &b }
	send := func(c *loadConn, n int) (int, error) {
		mb := msgBuf.Get().(*[]byte)
		defer msgBuf.Put(mb)
		c.wmu.Lock()
		defer c.wmu.Unlock()
		sent := 0
		for sent < n {
			if !take() {
				break
			}
			c.mu.Lock()
			seq := len(c.sentAt)
			c.sentAt = append(c.sentAt, 0)
			c.mu.Unlock()
			written.Add(1)
			*mb = message((*mb)[:0], seq)
			c.out = appendFrame(c.out, 0x1, *mb)
			sent++
			if !spec.Coalesce || sent == n {
				now := time.Now().UnixNano()
				c.mu.Lock()
				for i := len(c.sentAt) - sent; i < len(c.sentAt); i++ {
					if c.sentAt[i] == 0 {
						c.sentAt[i] = now
					}
				}
				c.mu.Unlock()
				if _, err := c.nc.Write(c.out); err != nil {
					return sent, err
				}
				c.out = c.out[:0]
			}
		}
		if len(c.out) > 0 { // budget ran out mid-group
			now := time.Now().UnixNano()
			c.mu.Lock()
			for i := len(c.sentAt) - sent; i < len(c.sentAt); i++ {
				if c.sentAt[i] == 0 {
					c.sentAt[i] = now
				}
			}
			c.mu.Unlock()
			_, err := c.nc.Write(c.out)
			c.out = c.out[:0]
			return sent, err
		}
		return sent, nil
	}

	// Readers: one per connection. Unpaced, the reader also refills the
	// window as acks free it; a connection is done when nothing is in
	// flight and nothing is left to send.
	var readers sync.WaitGroup
	for _, c := range conns {
		readers.Go(func() {
			if spec.Rate == 0 {
				if _, err := send(c, spec.Window); err != nil {
					errs.Add(1)
					return
				}
			}
			var buf []byte
			for {
				op, p, err := c.readFrame(buf)
				if err != nil {
					if !closing.Load() {
						fmt.Fprintf(os.Stderr, "read: %v\n", err)
						errs.Add(1)
					}
					return
				}
				buf = p
				now := time.Now().UnixNano()
				switch op {
				case 0x1:
				case 0x8:
					return
				case 0x9:
					c.wmu.Lock()
					c.nc.Write(appendFrame(nil, 0xA, p))
					c.wmu.Unlock()
					continue
				default:
					continue
				}
				const ackPrefix = `{"type":"ack","seq":`
				if !bytes.HasPrefix(p, []byte(ackPrefix)) {
					fmt.Fprintf(os.Stderr, "unexpected frame: %s\n", p)
					errs.Add(1)
					continue
				}
				rest := p[len(ackPrefix):]
				seq, _ := strconv.ParseUint(string(rest[:bytes.IndexAny(rest, ",}")]), 10, 64)
				c.mu.Lock()
				freed := int(seq - c.acked)
				for ; c.acked < seq; c.acked++ {
					at := c.sentAt[c.acked]
					if at >= warm {
						c.samples = append(c.samples, sample{time.Duration(at - start.UnixNano()), time.Duration(now - at)})
					}
				}
				inflight := len(c.sentAt) - int(c.acked)
				c.mu.Unlock()
				acked.Add(int64(freed))
				lastAck.Store(now)
				if spec.Rate == 0 && inflight < spec.Window {
					if _, err := send(c, spec.Window-inflight); err != nil {
						errs.Add(1)
						return
					}
				}
			}
		})
	}

	// Pacers: connection i sends at start + i/Conns/Rate + k/Rate.
	var lags []time.Duration
	if spec.Rate > 0 {
		interval := time.Duration(float64(time.Second) / spec.Rate)
		pacers := spec.Pacers
		if pacers <= 0 {
			pacers = 4
		}
		var lagMu sync.Mutex
		var pwg sync.WaitGroup
		for k := range pacers {
			pwg.Go(func() {
				var mine []int
				for i := k; i < spec.Conns; i += pacers {
					mine = append(mine, i)
				}
				local := make([]time.Duration, 0, 1024)
				t := time.NewTimer(0)
				<-t.C
				for round := 0; ; round++ {
					for _, i := range mine {
						due := start.Add(time.Duration(round)*interval + time.Duration(i)*interval/time.Duration(spec.Conns))
						if !due.Before(stopAt) {
							lagMu.Lock()
							lags = append(lags, local...)
							lagMu.Unlock()
							return
						}
						if d := time.Until(due); d > 50*time.Microsecond {
							t.Reset(d)
							<-t.C
						}
						c := conns[i]
						c.mu.Lock()
						full := len(c.sentAt)-int(c.acked) >= spec.Window
						c.mu.Unlock()
						if full {
							skipped.Add(1)
							continue
						}
						local = append(local, time.Since(due))
						if _, err := send(c, 1); err != nil {
							errs.Add(1)
						}
					}
				}
			})
		}
		pwg.Wait()
	}

	// Wait until every frame written is acknowledged (bounded), then close
	// every connection.
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		sending := spec.Rate == 0 && (spec.Total > 0 && budget.Load() > 0 || spec.Total == 0 && time.Now().Before(stopAt))
		if !sending && acked.Load() == written.Load() {
			break
		}
		if sending {
			deadline = time.Now().Add(10 * time.Second)
		}
		time.Sleep(2 * time.Millisecond)
	}
	elapsed := time.Duration(lastAck.Load() - start.UnixNano())
	closing.Store(true)
	for _, c := range conns {
		c.wmu.Lock()
		c.nc.Write(appendFrame(nil, 0x8, []byte{0x03, 0xe8}))
		c.wmu.Unlock()
		c.nc.Close()
	}
	readers.Wait()
	close(procStop)
	<-procDone

	var all []sample
	for _, c := range conns {
		all = append(all, c.samples...)
	}
	if n := written.Load() - acked.Load(); n > 0 {
		fmt.Fprintf(os.Stderr, "%d frames not acknowledged\n", n)
		errs.Add(1)
	}
	r := loadResult{Acked: acked.Load(), Elapsed: elapsed, Errors: errs.Load(), Skipped: skipped.Load(),
		Measured: int64(len(all)), Proc: procLines, Seconds: perSecond(all)}
	lats := make([]time.Duration, len(all))
	for i, s := range all {
		lats[i] = s.lat
	}
	r.P50, r.P99, r.P999, r.Max = quantiles(lats)
	if len(lags) > 0 {
		_, r.PaceP99, _, _ = quantiles(lags)
	}
	return r, nil
}

// quantiles sorts d and returns its p50, p99, p99.9 and maximum.
func quantiles(d []time.Duration) (p50, p99, p999, mx time.Duration) {
	if len(d) == 0 {
		return
	}
	slices.Sort(d)
	q := func(p float64) time.Duration { return d[min(int(p*float64(len(d))), len(d)-1)] }
	return q(.5), q(.99), q(.999), d[len(d)-1]
}

func perSecond(ss []sample) []secStat {
	var buckets [][]time.Duration
	for _, s := range ss {
		i := int(s.at / time.Second)
		for len(buckets) <= i {
			buckets = append(buckets, nil)
		}
		buckets[i] = append(buckets[i], s.lat)
	}
	out := make([]secStat, len(buckets))
	for i, b := range buckets {
		if len(b) == 0 {
			continue
		}
		p50, p99, _, mx := quantiles(b)
		out[i] = secStat{N: len(b), P50: p50, P99: p99, Max: mx}
	}
	return out
}
