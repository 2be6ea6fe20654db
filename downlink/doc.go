// Package downlink is the frontend's side of device commands: a Link holds
// a connection to every home (command.Home, in the middletiers), tells each
// home which of its devices are connected here, writes the commands homes
// deliver to those devices, and carries the devices' answers back. It also
// serves the HTTP API through which applications submit, read, list and
// cancel commands (API), forwarding each request to the device's home.
// docs/commands.md describes the whole path.
//
// # Homes
//
// A device's home is Options.Homes[HomeIndex(device, len(Homes))]: every
// frontend must list the same homes in the same order. The Link keeps one
// DEALER per home and dials it again whenever it ends (after a backoff
// that grows, 50 ms to 2 s, while connections end within a second of
// their start). Requests that get no reply within Options.RequestTimeout
// are sent again, and a connection that leaves one request unanswered
// twice in a row is ended for a new one; a send the socket refuses (its
// queue full) is not a miss: the socket's own watchdog ends a stalled
// connection. A request whose connection ends is sent on the next one as
// soon as it is up. Submits carry an idempotency key, so a request sent
// again never creates a second command.
//
// # Presence
//
// Attach reports a device's connection to its home at once and Detach its
// end; every Options.PresenceInterval the Link sends each home the full
// list of its devices connected here, which corrects anything a lost
// message left wrong. A command delivered for a device no longer here is
// answered with the device's absence, so its home waits for it to appear
// elsewhere.
//
// # Goroutines
//
// Run owns one goroutine per home (its dealer's and its reader's). The
// frames for one device are written in order by at most one goroutine at a
// time, which exists only while frames wait. Lock order: Link.mu before
// attachment.mu; home.mu is a leaf.
package downlink
