package wire

import (
	"fmt"
	"slices"
)

// Command messages carry device commands between frontends and their home
// middletiers (docs/commands.md): a device id hashes to one home, which
// keeps that device's commands in its own log and delivers them through
// whichever frontend reports the device present.
const (
	KindSubmit   Kind = 10 // frontend → home: accept a command
	KindQuery    Kind = 11 // frontend → home: get, list or cancel commands
	KindReply    Kind = 12 // home → frontend: the answer to a Submit or a Query
	KindPresence Kind = 13 // frontend → home: devices connected (or gone) at the frontend
	KindDeliver  Kind = 14 // home → frontend: commands to write to devices
	KindResult   Kind = 15 // frontend → home: a device's answer to a command
)

// CommandState is where a command is in its life. Acknowledged, Failed,
// Expired and Cancelled are final.
type CommandState uint8

const (
	StateQueued       CommandState = 1 // accepted and durable, not yet handed to a frontend
	StateSent         CommandState = 2 // handed to a frontend for the device, not yet answered
	StateAcknowledged CommandState = 3 // the device answered with status ok
	StateFailed       CommandState = 4 // the device answered with another status
	StateExpired      CommandState = 5 // its time to live ended before an answer
	StateCancelled    CommandState = 6 // cancelled before it was sent
)

var stateNames = [...]string{"", "queued", "sent", "acknowledged", "failed", "expired", "cancelled"}

func (s CommandState) String() string {
	if int(s) < len(stateNames) && s != 0 {
		return stateNames[s]
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// ParseCommandState returns the state named s.
func ParseCommandState(s string) (CommandState, bool) {
	for i, n := range stateNames {
		if i > 0 && n == s {
			return CommandState(i), true
		}
	}
	return 0, false
}

// Final reports whether s never changes again.
func (s CommandState) Final() bool { return s >= StateAcknowledged }

// Command is a command and everything known of it. Times are unix
// nanoseconds, 0 when not (yet) reached. A home keeps one Command per id;
// its log holds one Command per change, the last of an id being its state.
type Command struct {
	ID      string
	Device  string
	Name    string
	Payload []byte // JSON
	Key     string // idempotency key, "" for none
	State   CommandState
	Created int64
	Expires int64
	Sent    int64 // when it was first handed to a frontend
	Done    int64 // when it reached a final state
	Status  string
	Result  []byte // the device's answer payload, JSON; may be empty
}

// Query operations.
const (
	QueryGet    = 1 // the command named CID
	QueryList   = 2 // Device's commands, in the order accepted; State 0 for all
	QueryCancel = 3 // cancel the command named CID if it was not sent
)

// Submit asks the device's home to accept a command. Req names the request
// for its Reply. Key makes it idempotent: a home answers a Submit whose
// (Device, Key) it has seen with the command it accepted then.
type Submit struct {
	Req     uint64
	Device  string
	Name    string
	Payload []byte
	TTLMS   uint64
	Key     string
}

// Query gets, lists or cancels commands.
type Query struct {
	Req    uint64
	Op     uint8
	Device string
	CID    string
	State  CommandState
}

// Reply answers a Submit or a Query. Code is "" on success, else one of
// the Reply codes; Commands are the commands concerned.
type Reply struct {
	Req      uint64
	Code     string
	Commands []Command
}

// Reply codes.
const (
	CodeNotFound       = "not_found"
	CodeNotCancellable = "not_cancellable"
	CodeUnavailable    = "unavailable"
	CodeInvalid        = "invalid"
	// CodeFull answers a Submit that the home's log has no room to keep
	// (command.Home: a quarter of the log's bound is kept for the commands
	// it holds).
	CodeFull = "full"
)

// Presence tells a home which devices are connected at the frontend that
// sends it. Full says Devices is every device of that home the frontend
// holds: any other the home placed there is gone.
type Presence struct {
	Frontend string
	Full     bool
	Devices  []Place
}

// Place is a device's connection at a frontend: Since, the connection's
// start in unix nanoseconds, orders a device's connections; Present false
// says the connection that started at Since is gone.
type Place struct {
	Device  string
	Since   int64
	Present bool
}

// Deliver hands commands to a frontend to write to their devices.
type Deliver struct {
	Commands []Command
}

// Result is a device's answer to a command.
type Result struct {
	Device  string
	CID     string
	Status  string
	Payload []byte
}

func (*Submit) Kind() Kind   { return KindSubmit }
func (*Query) Kind() Kind    { return KindQuery }
func (*Reply) Kind() Kind    { return KindReply }
func (*Presence) Kind() Kind { return KindPresence }
func (*Deliver) Kind() Kind  { return KindDeliver }
func (*Result) Kind() Kind   { return KindResult }

func (m *Submit) fields(c codec) codec {
	c.uvarint(&m.Req)
	c.name(&m.Device)
	c.name(&m.Name)
	c.bytes(&m.Payload)
	c.uvarint(&m.TTLMS)
	c.name(&m.Key)
	return c
}

func (m *Query) fields(c codec) codec {
	c.uvarint(&m.Req)
	c.op(&m.Op, "query", QueryGet, QueryCancel)
	c.name(&m.Device)
	c.name(&m.CID)
	c.state(&m.State, 0) // 0: any state
	return c
}

func (m *Reply) fields(c codec) codec {
	c.uvarint(&m.Req)
	c.name(&m.Code)
	c.commands(&m.Commands)
	return c
}

func (m *Presence) fields(c codec) codec {
	c.name(&m.Frontend)
	c.bool(&m.Full)
	n := len(m.Devices)
	c.count(&n, 3) // every place takes at least three bytes
	if c.mode == reading {
		m.Devices = make([]Place, n)
	}
	for i := range m.Devices {
		p := &m.Devices[i]
		c.name(&p.Device)
		c.int64(&p.Since)
		c.bool(&p.Present)
	}
	return c
}

func (m *Deliver) fields(c codec) codec {
	c.commands(&m.Commands)
	return c
}

func (m *Result) fields(c codec) codec {
	c.name(&m.Device)
	c.name(&m.CID)
	c.name(&m.Status)
	c.bytes(&m.Payload)
	return c
}

const commandVersion = 1

// AppendCommand appends the encoding of cmd to dst: the form a home keeps in
// its log and sends in Reply and Deliver.
func AppendCommand(dst []byte, cmd *Command) []byte {
	c := codec{mode: sizing}
	cmd.fields(&c)
	c = codec{b: slices.Grow(dst, c.n), mode: writing}
	cmd.fields(&c)
	return c.b
}

// DecodeCommand decodes one command that is the whole of b; its byte
// slices alias b.
func DecodeCommand(b []byte) (Command, error) {
	var cmd Command
	c := codec{b: b, mode: reading}
	cmd.fields(&c)
	if c.end(); c.err != nil {
		return Command{}, fmt.Errorf("%w: command: %w", ErrInvalid, c.err)
	}
	return cmd, nil
}

// fields takes a pointer, as Record's does: it runs inside the fields of
// the messages that carry commands, and for each of a home's log entries.
func (cmd *Command) fields(c *codec) {
	c.version("command", commandVersion)
	c.name(&cmd.ID)
	c.name(&cmd.Device)
	c.name(&cmd.Name)
	c.bytes(&cmd.Payload)
	c.name(&cmd.Key)
	c.state(&cmd.State, StateQueued)
	for _, t := range [...]*int64{&cmd.Created, &cmd.Expires, &cmd.Sent, &cmd.Done} {
		c.int64(t)
	}
	c.name(&cmd.Status)
	c.bytes(&cmd.Result)
}

func (c *codec) commands(p *[]Command) {
	n := len(*p)
	c.count(&n, 13) // every command takes at least thirteen bytes (AppendCommand)
	if c.mode == reading {
		*p = make([]Command, n)
	}
	for i := range *p {
		(*p)[i].fields(c)
	}
}
