// Package stream follows one middletier's stream as its consumers must: a
// Follower subscribes to the middletier's PUB socket, drains it at once,
// takes records strictly in sequence order, fills gaps by fetch over the
// middletier's consumer socket, and hands the records to a Handler. The
// storage writers and the live feed are its users; docs/wire.md specifies
// the messages.
//
// # Durable and live
//
// A durable Follower (a storage writer) keeps no state of its own: the
// middletier keeps its checkpoint. At start it asks where to resume (a
// Fetch from 0 is answered from the checkpoint + 1) and fetches until it
// has caught up, then follows the stream. It fills every gap, however long;
// a fetch that goes unanswered three times ends the connection, and the
// Follower dials again and asks again from where it is: nothing is skipped
// for a failure. After the stream has been silent for IdlePoll it fetches,
// in case the stream's last messages were lost. It commits a checkpoint
// only for records the Handler has taken (Records returned nil: they are
// durable downstream), and at shutdown sends its last checkpoint once more
// and waits a moment for the middletier to make it durable.
//
// A live Follower (the feed) starts at the first stream message it
// receives, fills a gap only up to MaxGapFill records and asks once for
// each fetch, reports the rest to the Handler as lost, and never
// commits: a middletier keeps records only for its durable consumers.
// With a consumer endpoint it too looks after IdlePoll of silence: it
// fills what the stream's last messages held, and a look unanswered three
// times ends the connection (a half-open one would hold it for minutes). Fetch
// serves a reader that resumes from a sequence, over a socket of its own.
//
// The records a Handler is given are slices of the stream's messages as
// the socket read them. Once they are handed over, the Follower gives the
// messages back to the socket (zsock.ReleaseFrame), which reads later ones
// into them: a record's bytes are valid until Records returns, and a
// Handler copies what it keeps.
//
// # What is ordered, what may repeat, what may be lost
//
// Within one Follower, Records and Lost are called in sequence order, each
// sequence taken at most once, and no sequence skipped without a Lost, for
// as long as the middletier's sequence lasts. Records that a Handler refuses
// (an error) are taken again: from the stream or by fetch. A durable
// consumer that restarts takes again what it had taken after its last
// checkpoint; its Handler must take repeats harmlessly (the sinks are
// idempotent). The same entry of a frontend can be in two middletiers'
// streams after a failover; a Follower follows one middletier and does not
// know of the other.
//
// A durable Follower loses a record only when the middletier released it
// before the consumer committed it: the middletier was not told the
// consumer is durable (its --consumers); the Handler gets Lost with cause
// Released. A live Follower also loses what does not fit MaxGapFill and
// what one fetch cannot get.
//
// A middletier whose WAL was created again starts its sequence at 1 again.
// A durable Follower asks where to resume at the start of every
// connection; a middletier that has lost a checkpoint it acknowledged, or
// holds fewer records than were taken from it, has restarted its sequence,
// and the Follower starts over from its checkpoint there; so it does, too,
// when the middletier does not hold a checkpoint committed and not yet
// acknowledged (lost on the way, or a restarted sequence: it cannot tell
// which, and takes again what came after). A live Follower
// starts over at 1 on a stream message from 1 that comes after later ones,
// or on the first message of a connection that comes below where it is:
// the new sequence's records before that message are a gap, filled or
// reported lost.
// What either held of the old sequence is handed over and not committed.
//
// # Goroutines and locks
//
// Run owns every goroutine the Follower uses: its own, which subscribes,
// fetches, calls the Handler and commits; per connection the Sub's reader,
// which only drains the SUB socket into the buffer (a zmq4 PUB writes its
// subscribers one after another, so a subscriber that stops reading slows
// every other), and the consumer Dealer's sender and reader; and the
// goroutine that serves Fetch with its own Dealer. The Handler's methods
// run on Run's goroutine: a Handler that blocks delays the stream's
// records, never the socket's draining. The Follower holds no lock while it
// calls the Handler; its counters for other goroutines (Connected,
// CaughtUp, Middletier) are atomic.
//
// # Writer groups
//
// A Member follows one middletier for a member of a writer group: it asks
// the middletier for the group's lease (wire.Lease) every fifth of its
// time to live, and runs a durable Follower under the group's name only
// while it holds it, so that each stream is followed by one member at a
// time and a new holder resumes from the group's checkpoint. See Member.
//
// # Per-stream state
//
// Everything a Follower knows of its stream (the next sequence, the last
// the middletier has, the checkpoint committed and acknowledged, the batch
// being built) lives in the Follower and nowhere else, so that a stream can
// be handed from one consumer to another with its checkpoint.
package stream
