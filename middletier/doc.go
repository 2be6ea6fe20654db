// Package middletier is the router tier: it takes batches of entries from
// frontends over ZeroMQ, makes them durable a second time in its own WAL,
// acknowledges them, and publishes them as a stream to storage writers and
// the live feed, which fill gaps with fetch and report their progress with
// commit. docs/wire.md specifies the messages.
//
// # Sockets
//
// A Router listens on four ZeroMQ sockets: an ingest ROUTER for frontends,
// a consumer ROUTER for fetch and commit, a stream PUB for durable consumers
// and, optionally, a feed PUB for the live feed. Frontends and consumers
// have separate ROUTERs because zmq4 sends on a ROUTER have no deadline and
// hold one lock for every peer: a consumer that stops reading fetch replies
// must not be able to hold up acknowledgements to frontends. Both are
// zsock.Routers: every send goes through one goroutine whose watchdog
// closes the socket and listens again on the same address when a send
// stalls (Options.SendStall), counted in
// ingest_middletier_send_stalls_total{socket}; peers reconnect and
// retransmit, and nothing durable is lost. The stream and the feed have
// separate PUB sockets so that neither slows the other.
//
// # Durability and acknowledgement
//
// A batch is acknowledged only after an fsync of the middletier's WAL
// covers every new entry in it. Acks are cumulative per origin (a
// frontend's log): Ack{UpTo} says every entry of the origin up to UpTo is
// durable here or, for entries up to the frontend's own release mark,
// somewhere else. Batches waiting for the WAL are appended together with
// one fsync (group commit).
//
// # Repeats and gaps
//
// Each record in the WAL carries its identity, (origin, index in the
// origin's log). The Router keeps, per origin, the highest index it holds,
// and drops entries at or below it: a retransmission never enters this
// middletier's stream twice. The marks survive restarts: they are kept in
// the state file, written before the WAL is released, and raised at start
// by reading every record still in the WAL. A WAL that ends before the
// records the state file accounts for (cut and repaired, or created again)
// may have lost records those marks name, which frontends that were not
// acknowledged for them still hold: the state's marks are then dropped
// (durably, before anything is appended), and only the WAL's records and
// the frontends' release marks set them. Repeats may follow, never loss.
//
// zmq4 can drop a message silently and deliver the ones after it, so a
// batch that does not follow on from the origin's mark, nor from the
// frontend's release mark that it carries, is not appended: the Router
// answers Resend{From}, and the frontend sends again from there.
//
// # Backpressure
//
// At the WAL's bound, when its disk is full (wal.ErrNoSpace), or when more
// batches wait than Options.IngestQueue, batches are answered Busy with a
// retry hint and nothing is appended: the frontend keeps its entries and
// tries again. A state file that cannot be written for lack of room keeps
// the old one: commits are acknowledged and the WAL released only once a
// later write succeeds (every second), and
// ingest_middletier_state_no_space says so meanwhile. When the state would
// let a whole WAL segment go, it is written in the room the WAL keeps in
// reserve (wal.Log.SpendReserve): a disk the WAL filled itself empties
// once the consumers catch up. A failed WAL (fail
// stop) ends Run with its error, so that the process exits and is started
// again on the log reopened. A durable consumer that falls
// behind holds the WAL's entries, which fills the WAL towards its bound:
// lag becomes backpressure, never loss. Its lag is a metric, and a line is
// logged when it passes Options.LagWarn.
//
// # Stream, fetch and commit
//
// The stream carries records in WAL order with their sequence numbers (the
// middletier's WAL indexes). A PUB socket drops messages silently past its
// high-water mark, so subscribers detect gaps by sequence and fetch them.
// The WAL is released up to the lowest checkpoint of the durable consumers
// named in Options.Consumers (or, with none, up to what was published), and
// never past what the state file covers; commit is acknowledged once the
// checkpoint is durable and the release it allows is done. Any connection
// may commit under any name: the middletier keeps at most 1,024 checkpoints
// of names that are not durable consumers, and past that a new name takes
// the place of the lowest (maxCheckpoints). Such a consumer that lost its
// place resumes from the oldest entry it can fetch: repeats, no loss.
//
// # Writer groups
//
// Storage writers that share a group name divide the streams: each asks
// every middletier for the group's lease on its stream (wire.Lease), and a
// middletier grants it to one live member at a time, chosen by the slot
// the members send (the middletier's position in their lists), and hands
// it over when the members change (Revoked, then the holder's release) or
// when the holder stops renewing for Options.LeaseTTL. The group's
// checkpoint is the consumer checkpoint of its name; retention is as for
// any durable consumer. groups.go has the rules;
// ingest_middletier_group_writers{group} counts a group's live writers and
// ingest_middletier_group_holder{group,writer} names the holder. A group
// that is not a durable consumer is forgotten, with its gauges, once it has
// had no live member for a LeaseTTL.
//
// # Security
//
// zmq4 offers no encryption (no CURVE), and it greets new connections in
// its accept loop with no deadline, so a silent client can delay others'
// connecting. Keep the inter-tier network private: on Kubernetes, the
// NetworkPolicies in deploy/k8s let only frontends reach the ingest socket
// and only consumers the others.
//
// # Known limits
//
// zmq4 v0.17.0 leaks a goroutine when a socket is closed at the wrong
// moment, and nothing a caller does can end it: a PUB socket's writer
// goroutine if it was sending when the socket closed (its one wake-up is
// lost), and a ROUTER's reader goroutine for a connection whose messages
// were still arriving when the socket closed with its ten-message queue
// full (the reader waits to hand on one more message that no one will
// take). Each holds a goroutine and a message; they come from closing
// sockets, which the middletier does at shutdown and when its watchdog
// replaces a stalled socket (zsock/doc.go).
//
// # Goroutines
//
// Run owns every goroutine: each ROUTER's reader and sender (zsock.Router's
// Run), the ingest worker, the publisher, the fetch worker and the state
// keeper, all ended by one context that Run derives from its own and
// cancels on a WAL or state failure. New binds the sockets (so that their
// addresses are known before Run) and starts no goroutine of its own; Run,
// or Close for a Router that never ran, closes them.
package middletier
