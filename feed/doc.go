// Package feed is the live feed: it follows the middletiers' feed sockets
// and serves their device messages to dashboards over WebSocket, filtered
// per subscription by device id, id prefix, or registry group.
// docs/protocol.md ("Live feed") specifies what readers see.
//
// # Lossy by design, and says so
//
// The feed never slows the pipeline. Per middletier, a live
// stream.Follower (the package stream has the contract) drains the SUB
// socket on one goroutine into a bounded buffer (a zmq4 PUB writes its
// subscribers one after another, so a slow subscriber would slow every
// other one); on another it takes records in sequence order and hands them
// to the feed, which decodes each record once and queues it for every
// reader whose filter matches, without ever blocking. A record's JSON frame
// is built when the first reader's filter takes it, once, and shared by
// every reader it is queued for; a record no reader takes costs no frame.
// Once every reader it was queued for has written it (or dropped or
// abandoned it), its buffer is given back and a later record's frame is
// built into it (up to 1,024 buffers of 4 KiB are kept).
// A device's payload is not parsed again: the frontend took only a JSON
// object, and the envelope's checksum holds it to what the frontend wrote.
// Each reader has a bounded queue: when it is full, messages for that
// reader are dropped and counted, the reader gets a "missed" notice
// with the count before its next message, and a reader that stays behind
// for Options.SlowGrace (or misses more than Options.MaxMissed before
// catching up) gets a last notice and is closed with StatusTooSlow (4000).
//
// A reader that is slow is told so before any write to it times out:
// writes to a reader's socket never block. They go into a send buffer of
// its own that a goroutine writes out, and the kernel keeps at most 64 KiB
// of it unsent (TCP_NOTSENT_LOWAT, on Linux); while more than 32 KiB wait
// there the reader is not taking what it is sent: its messages stay in its
// queue, which drops; the pongs for its pings go behind what it has not
// read, up to 4 KiB of them, and past those a ping it sends is answered
// (and its frames read further) only once it takes again. The last notice
// and the close can therefore always be written: they wait behind what the
// reader has not read yet, for up to Options.PingInterval plus
// Options.PongTimeout, then the socket is closed. A reader that stops
// reading for a while gets them when it reads again.
//
// # Sequence, gaps and resume
//
// Stream messages carry the middletier's sequence numbers. A jump (the PUB
// socket's high-water mark, a lost connection, the buffer behind the socket
// overflowing) is a gap: with the middletier's consumer socket configured
// the Follower fetches the missing records (at most Options.MaxGapFill)
// before going on, so readers get them in order; what it cannot fetch is
// announced to every reader as missed. A stream silent for a second may
// have lost its last messages, or gone half-open (the middletier's host
// gone without a word): the Follower then asks the middletier where its
// sequence is, fetches what it missed, and dials again if three asks go
// unanswered. A subscription may ask to resume from
// a sequence: the records from there up to where its live messages start
// are fetched (stream.Follower's Fetch, one request at a time per
// middletier) and written first. The feed is not a durable consumer and
// never commits: a middletier keeps records only for its durable consumers
// (storage writers), so resume reaches back as far as they have not
// committed, and no further.
//
// Records that arrive twice with the same identity (origin, index), as
// across a middletier failover, are dispatched once.
//
// # Command events
//
// A record whose envelope has topic wire.CommandEventTopic is a command
// home's event of a command's state change, not a device's message: it is
// written as a command frame ("type":"command", the event in "command"),
// only to readers whose subscription asked for commands, by the same
// filter. An event whose payload does not decode is counted as invalid and
// dispatched to nobody.
//
// # Goroutines
//
// Run owns every goroutine: per source the Follower's Run and the
// goroutines it owns (among them the one that dispatches), and per reader
// the HTTP handler (the only writer of its frames), a reader goroutine
// (coder/websocket needs one always reading), a pinger, and the flusher of
// its send buffer (which the handler waits for). Lock order: the hub's
// lock, then a reader's queue lock; a Follower holds no lock while it
// hands records to the feed.
package feed
