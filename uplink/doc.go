// Package uplink is the frontend's forwarder (its queue monitor): it reads
// the frontend's WAL in order and carries it to a middletier over a ZeroMQ
// DEALER, releasing entries from the WAL only once the middletier has made
// them durable and said so. docs/wire.md specifies the messages.
//
// # Delivery
//
// zmq4 gives no delivery guarantee: Send reports success for messages it
// drops while a connection is down. The Link therefore trusts only the
// middletier's cumulative acknowledgements. It keeps at most Window batches
// unacknowledged; when no acknowledgement comes for AckTimeout it sends
// again from the oldest unacknowledged entry (go-back-N), and after
// Reconnect such timeouts in a row it closes the socket and connects a new
// one. A middletier that acknowledges nothing for Failover while entries
// wait is left for the next one in the Link's ranking, whether it keeps
// the connection or ends each one as soon as it begins (a connection that
// ends within a second is dialed again after a backoff). Entries may reach a
// middletier more than once, and reach two middletiers across a failover;
// the middletier drops repeats by (origin, index).
//
// # Spread
//
// The Link ranks the middletiers with Rank (rendezvous hashing of its ID
// with each endpoint), so that frontends spread over them, and connects
// to its first choice. When it is on another, it looks every Return
// whether its first choice is back (a socket connected to it, on a
// goroutine of its own), and goes back once that socket's connection has
// lasted a second: it sends nothing new until what is in flight to the
// current middletier is acknowledged (or an AckTimeout passes), then sends
// from its oldest unacknowledged entry on the new socket. A drained move
// puts no entry in two streams. A first choice whose connection ends
// sooner is not gone back to, and looked at half as often each time, down
// to once every 32 Returns.
//
// Each batch carries the frontend's release mark, so that a middletier can
// tell a gap the frontend vouches for (entries acknowledged by another
// middletier) from a batch lost on the way, which it answers with Resend.
// Busy (the middletier at its bound) makes the Link wait for the retry hint
// and send again; the entries stay in the frontend's WAL, which fills
// towards its own bound and turns into backpressure on devices.
//
// # Sockets
//
// A zmq4 DEALER sends every message to every peer it is connected to, so a
// Link's socket, a zsock.Dealer, is connected to exactly one middletier.
// Sends go through one goroutine whose watchdog closes the socket if a send
// stalls (Options.SendStall: a stalled zmq4 send leaves its write stuck);
// the Link then connects a new socket. Each socket has an identity of its
// own, <origin>#<n>-<random> (the origin cut where the whole would pass
// ZMTP's 255 bytes), so that a middletier never answers a new socket's
// batches to an old one.
//
// # Goroutines
//
// Run is the Link's goroutine: it reads the WAL, sends, takes the
// acknowledgements and closes its socket before it returns; the socket's
// sender and reader are the Dealer's, ended by its Close. The look for the
// first choice runs on a goroutine Run starts and waits for.
//
// Run waits for what comes next: a commit to the WAL (only with nothing
// read and unsent), a message from the middletier, the end of the look,
// and one timer set to the earliest deadline it owes (the next dial after
// a backoff, the end of a busy pause with entries to send, the end of a
// linger). A tick, a quarter of AckTimeout, checks for timeouts and
// failover. The look for the first choice starts at the first turn of the
// loop after it is due: at the latest, that tick.
//
// # Order
//
// Entries reach a middletier in WAL order, which keeps each device's order
// from the device to the middletier. After a failover or a return, entries
// reach the stream of another middletier, and the order across the two
// streams is not defined.
package uplink
