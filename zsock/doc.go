// Package zsock holds the ZeroMQ sockets of the engine as zmq4 must be used:
// every tier that speaks the wire (docs/wire.md) opens its sockets here, so
// that each workaround for zmq4 v0.17.0 is written once.
//
// # What zmq4 does, and what the sockets here do about it
//
//   - A DEALER sends every message to every peer it is connected to. A
//     Dealer is connected to exactly one peer, and is closed rather than
//     connected again: a new connection is a new Dealer.
//   - A send gives up after the socket's timeout (WithTimeout) with
//     context.DeadlineExceeded, but leaves its write blocked on the
//     connection, and a ROUTER's send holds one lock for every peer: one
//     peer that stops reading freezes sends to all. Every socket here sends
//     from one goroutine with the timeout set to its SendStall, and a
//     watchdog closes the socket when one send takes longer than that,
//     which is the only way to free a stalled zmq4 write; whichever of the
//     two sees the stall first, it is the same stall. A Dealer then ends (Done is closed,
//     Err is ErrStalled); a Router recycles itself: it closes the socket and
//     listens again on the same address, and its peers reconnect.
//   - A ROUTER answers a message to every connection whose peer has the
//     identity the message is addressed to. A peer that connects again under
//     the identity of a connection the ROUTER has not yet seen close would
//     get the answers meant for both; where that matters, each connection
//     has an identity of its own (Identity).
//   - Send reports success for a message it dropped while no connection was
//     up, and a PUB socket drops messages past its high-water mark without a
//     word. Nothing here trusts a send: delivery is proven by the protocol's
//     acknowledgements (docs/wire.md).
//   - A PUB writes its subscribers one after another: a subscriber that
//     stops reading slows every other. A Sub drains its socket at once into a
//     bounded buffer and drops what does not fit, which its user sees as a
//     gap in sequence.
//   - Upstream, a connection's greeting had no deadline, and a listening
//     socket greeted in its accept loop: a peer that said nothing held a
//     dial, or every later connection, for good. The engine's copy greets
//     accepted connections on goroutines of their own within 10 s, and a
//     dial within its DialTimeout (third_party/go-zeromq-zmq4, patch 8).
//
// # Ordering
//
// Messages are handed to zmq4 in the order Send took them, one at a time;
// SendWait returns once its message is written, so that what its caller
// does next (a consumer's next write to its store) comes after it.
// Received messages come out of Recv in the order zmq4 gave them. Nothing
// is sent or delivered twice by this package; zmq4 may drop messages, and a
// Router drops replies when its queue is full or its socket is recycled,
// and those a socket has before it has received anything (a recycled one:
// they are for the old socket's peers, and zmq4 would hold each until a
// first peer came, which the watchdog would take for a stall): the
// protocol asks again.
//
// # Goroutines
//
// A Dealer and a Sub are connections: Dial and Subscribe start their
// goroutines (a Dealer: one sender, one reader; a Sub: one reader), and
// Close ends them and waits for them. A Router starts nothing until Run,
// which owns its sender and reader and returns once both have ended. A
// watchdog that fires runs on a timer's goroutine; the sender waits for it
// before it sends again or returns. Lock order: each type has one mutex,
// a leaf.
//
// # Known limits
//
// zmq4 v0.17.0 leaks a goroutine when a socket is closed at the wrong
// moment, and nothing a caller does can end it: a PUB socket's writer if it
// was sending when the socket closed, and a ROUTER's reader for a
// connection whose messages were still arriving when the socket closed with
// its ten-message queue full. Tests ignore both by name. (A connection
// that a ROUTER accepted while it closed used to stay open; the engine's
// copy closes it, third_party/go-zeromq-zmq4, patch 8.)
package zsock
