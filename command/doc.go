// Package command is the home of devices' commands: the part of a
// middletier that accepts commands for the devices whose id hashes to it,
// keeps them in its own WAL, and delivers them to each device through the
// frontend that reports the device connected. docs/commands.md describes
// the whole path; docs/wire.md the messages.
//
// # Durability
//
// Every change of a command (accepted, sent, answered, expired, cancelled)
// is appended to the home's log as the command's whole state, and nothing
// that depends on a change leaves the home before the fsync that covers it:
// a Submit is answered only once the command is durable, and a command is
// handed to a frontend only once its state "sent" is. After a restart the
// home reads its log again: the last state of each id is the command's
// state. So a command accepted is never lost, a command cancelled is never
// sent, and a command marked sent may have reached its device, which is
// why only a queued command can be cancelled.
//
// # Delivery
//
// Frontends report the devices they hold with Presence (a whole list every
// second, and each connect and disconnect at once). A device's place is the
// connection with the latest start time; a place no full list has named for
// Options.PresenceTimeout is forgotten (looked for every fifth of it, at
// most every second). For a placed device, the home sends
// its commands in the order they were accepted, at most Options.MaxInFlight
// unanswered at a time: queued ones are marked sent and handed on; sent
// ones that stay unanswered for Options.Redeliver, or whose device moved to
// another connection, are handed on again. Delivery is at least once: a
// device may see a command id twice and must answer each time (the client
// package answers a repeat with the answer it gave). A command whose time
// to live ends before it is answered expires; an expired command is never
// sent again. An answer that arrives after a final state is dropped.
//
// # Events
//
// With Options.Events, every change of a command's state (accepted, first
// sent, answered, expired, cancelled; not a redelivery, not a compaction's
// rewrite) is also an event: a wire.CommandEvent in an envelope on topic
// wire.CommandEventTopic, for the command's device, at the change's time
// (moved to the millisecond after the device's previous event when it
// would share one, so that every event is a sample of its own in the
// stores). A round's events are appended to the events log, with one
// fsync, before the round's changes to the command log: a change the home
// keeps has its event; a crash between the appends leaves events of
// changes the home did not keep, most of which it then makes again. An
// uplink.Link forwards the events log to Options.EventsTo, from where the
// events reach the storage writers and the live feed as devices' messages
// do. Events that find the log at its bound or the disk full are dropped
// and counted; the commands go on.
//
// # Retention and compaction
//
// A command in a final state stays known (GET, list, its idempotency key)
// for Options.Retain after it ended, then is forgotten. The log only grows
// by appends, so once it holds more than twice the commands kept and
// Options.CompactEntries besides, a round appends the state of every kept
// command again and, once that append is durable, releases every entry
// before it; the WAL truncates the released segments. The log therefore
// stays within a small multiple of the commands kept, whatever the number
// of commands that passed through.
//
// # Goroutines
//
// Run owns them: the ROUTER socket's reader and sender (zsock.Router), the
// events' uplink.Link (with Options.Events), and one loop that holds every command and device, takes the messages the
// reader hands it, and appends each round of changes with one fsync (group
// commit) before it answers or delivers anything of that round.
package command
