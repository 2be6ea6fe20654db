// Package loadgen is the engine's device load generator: a fleet of
// devices, each one WebSocket connection speaking device protocol v1
// (docs/protocol.md), sending one message per frame with a window of frames
// in flight, either as fast as the acknowledgements allow (closed loop) or
// paced at a rate per device. The bench command and the frontend's Go
// benchmarks drive their load with it.
//
// It speaks only the part of RFC 6455 a sending device needs, over plain
// TCP (or TLS for wss://), and not through a WebSocket library, so that its
// own cost per message is low and known: on the machines the engine is
// measured on, the generator shares the cores with the server it measures,
// and every microsecond it spends is one the server does not get. Per
// device there is one goroutine, which reads the server's frames with one
// read system call per group of them, settles every message an ack covers,
// and writes the frames that frees in the same goroutine: no hand-off
// between goroutines per message, no map and no allocation per message. A
// frame is written with one write system call, or the frames one ack lets
// go with one write between them (Options.Coalesce), as a device with a
// queue would. The masking key is fixed.
//
// Messages are numbered 1, 2, 3… per device, and the numbering survives
// reconnects: with Options.Reconnect a device whose connection ends (the
// server closed it, or the process behind it was killed) reconnects with
// exponential backoff, at least the server's retry hint, and sends again,
// in order and before anything new, every message not yet acknowledged,
// as docs/protocol.md asks of a device. Delivery is therefore at least
// once; a message is settled exactly once, acknowledged or rejected.
//
// A Fleet runs in phases, so that a caller can do its own work between
// them: Connect dials every device and starts its goroutine, Send sends
// for the duration, Drain waits for what is in flight, Close ends every
// connection and waits for the goroutines. Run does all four.
package loadgen
