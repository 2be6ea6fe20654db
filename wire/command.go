package wire

import "fmt"

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

func (m *Submit) encode(e encoder) encoder {
	e.uvarint(m.Req)
	e.string(m.Device)
	e.string(m.Name)
	e.bytes(m.Payload)
	e.uvarint(m.TTLMS)
	e.string(m.Key)
	return e
}

func (m *Submit) decodeBody(d *decoder) error {
	m.Req = d.uvarint()
	m.Device = d.name()
	m.Name = d.name()
	m.Payload = d.bytes()
	m.TTLMS = d.uvarint()
	m.Key = d.name()
	return d.err
}

func (m *Query) encode(e encoder) encoder {
	e.uvarint(m.Req)
	e.byte(m.Op)
	e.string(m.Device)
	e.string(m.CID)
	e.byte(byte(m.State))
	return e
}

func (m *Query) decodeBody(d *decoder) error {
	m.Req = d.uvarint()
	m.Op = d.op("query", QueryGet, QueryCancel)
	m.Device = d.name()
	m.CID = d.name()
	m.State = d.state(0) // 0: any state
	return d.err
}

func (m *Reply) encode(e encoder) encoder {
	e.uvarint(m.Req)
	e.string(m.Code)
	e.commands(m.Commands)
	return e
}

func (m *Reply) decodeBody(d *decoder) error {
	m.Req = d.uvarint()
	m.Code = d.name()
	m.Commands = d.commands()
	return d.err
}

func (m *Presence) encode(e encoder) encoder {
	e.string(m.Frontend)
	e.bool(m.Full)
	e.uvarint(uint64(len(m.Devices)))
	for _, p := range m.Devices {
		e.string(p.Device)
		e.uvarint(uint64(p.Since))
		e.bool(p.Present)
	}
	return e
}

func (m *Presence) decodeBody(d *decoder) error {
	m.Frontend = d.name()
	m.Full = d.bool()
	m.Devices = make([]Place, d.count(3)) // every place takes at least three bytes
	for i := range m.Devices {
		p := &m.Devices[i]
		p.Device = d.name()
		p.Since = d.int64()
		p.Present = d.bool()
	}
	return d.err
}

func (m *Deliver) encode(e encoder) encoder {
	e.commands(m.Commands)
	return e
}

func (m *Deliver) decodeBody(d *decoder) error {
	m.Commands = d.commands()
	return d.err
}

func (m *Result) encode(e encoder) encoder {
	e.string(m.Device)
	e.string(m.CID)
	e.string(m.Status)
	e.bytes(m.Payload)
	return e
}

func (m *Result) decodeBody(d *decoder) error {
	m.Device = d.name()
	m.CID = d.name()
	m.Status = d.name()
	m.Payload = d.bytes()
	return d.err
}

const commandVersion = 1

// AppendCommand appends the encoding of c to dst: the form a home keeps in
// its log and sends in Reply and Deliver.
func AppendCommand(dst []byte, c *Command) []byte {
	return appendSized(dst, func(e encoder) encoder {
		e.command(c)
		return e
	})
}

// DecodeCommand decodes one command that is the whole of b; its byte
// slices alias b.
func DecodeCommand(b []byte) (Command, error) {
	d := &decoder{b: b}
	c := d.command()
	if d.end(); d.err != nil {
		return Command{}, fmt.Errorf("%w: command: %w", ErrInvalid, d.err)
	}
	return c, nil
}

func (e *encoder) command(c *Command) {
	e.byte(commandVersion)
	e.string(c.ID)
	e.string(c.Device)
	e.string(c.Name)
	e.bytes(c.Payload)
	e.string(c.Key)
	e.byte(byte(c.State))
	for _, t := range [...]int64{c.Created, c.Expires, c.Sent, c.Done} {
		e.uvarint(uint64(t))
	}
	e.string(c.Status)
	e.bytes(c.Result)
}

func (d *decoder) command() (c Command) {
	d.version("command", commandVersion)
	c.ID = d.name()
	c.Device = d.name()
	c.Name = d.name()
	c.Payload = d.bytes()
	c.Key = d.name()
	c.State = d.state(StateQueued)
	for _, t := range [...]*int64{&c.Created, &c.Expires, &c.Sent, &c.Done} {
		*t = d.int64()
	}
	c.Status = d.name()
	c.Result = d.bytes()
	return c
}

func (e *encoder) commands(cs []Command) {
	e.uvarint(uint64(len(cs)))
	for i := range cs {
		e.command(&cs[i])
	}
}

func (d *decoder) commands() []Command {
	cs := make([]Command, d.count(13)) // every command takes at least thirteen bytes (AppendCommand)
	for i := range cs {
		cs[i] = d.command()
	}
	return cs
}
