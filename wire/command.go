package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
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

func (m *Submit) appendBody(dst []byte) []byte {
	dst = binary.AppendUvarint(dst, m.Req)
	dst = appendString(dst, m.Device)
	dst = appendString(dst, m.Name)
	dst = appendBytes(dst, m.Payload)
	dst = binary.AppendUvarint(dst, m.TTLMS)
	return appendString(dst, m.Key)
}

func (m *Submit) decodeBody(d *decoder) (err error) {
	if m.Req, err = d.uvarint(); err != nil {
		return err
	}
	if m.Device, err = d.name(); err != nil {
		return err
	}
	if m.Name, err = d.name(); err != nil {
		return err
	}
	if m.Payload, err = d.bytes(); err != nil {
		return err
	}
	if m.TTLMS, err = d.uvarint(); err != nil {
		return err
	}
	m.Key, err = d.name()
	return err
}

func (m *Query) appendBody(dst []byte) []byte {
	dst = binary.AppendUvarint(dst, m.Req)
	dst = append(dst, m.Op)
	dst = appendString(dst, m.Device)
	dst = appendString(dst, m.CID)
	return append(dst, byte(m.State))
}

func (m *Query) decodeBody(d *decoder) (err error) {
	if m.Req, err = d.uvarint(); err != nil {
		return err
	}
	if m.Op, err = d.byte(); err != nil {
		return err
	}
	if m.Op < QueryGet || m.Op > QueryCancel {
		return fmt.Errorf("query op %d", m.Op)
	}
	if m.Device, err = d.name(); err != nil {
		return err
	}
	if m.CID, err = d.name(); err != nil {
		return err
	}
	s, err := d.byte()
	if err != nil {
		return err
	}
	if s > byte(StateCancelled) {
		return fmt.Errorf("state %d", s)
	}
	m.State = CommandState(s)
	return nil
}

func (m *Reply) appendBody(dst []byte) []byte {
	dst = binary.AppendUvarint(dst, m.Req)
	dst = appendString(dst, m.Code)
	dst = binary.AppendUvarint(dst, uint64(len(m.Commands)))
	for i := range m.Commands {
		dst = AppendCommand(dst, &m.Commands[i])
	}
	return dst
}

func (m *Reply) decodeBody(d *decoder) (err error) {
	if m.Req, err = d.uvarint(); err != nil {
		return err
	}
	if m.Code, err = d.name(); err != nil {
		return err
	}
	m.Commands, err = d.commands()
	return err
}

func (m *Presence) appendBody(dst []byte) []byte {
	dst = appendString(dst, m.Frontend)
	if m.Full {
		dst = append(dst, 1)
	} else {
		dst = append(dst, 0)
	}
	dst = binary.AppendUvarint(dst, uint64(len(m.Devices)))
	for _, p := range m.Devices {
		dst = appendString(dst, p.Device)
		dst = binary.AppendUvarint(dst, uint64(p.Since))
		if p.Present {
			dst = append(dst, 1)
		} else {
			dst = append(dst, 0)
		}
	}
	return dst
}

func (m *Presence) decodeBody(d *decoder) (err error) {
	if m.Frontend, err = d.name(); err != nil {
		return err
	}
	if m.Full, err = d.bool(); err != nil {
		return err
	}
	n, err := d.uvarint()
	if err != nil {
		return err
	}
	if n > uint64(len(d.b))/3 { // every place takes at least three bytes
		return errShort
	}
	m.Devices = make([]Place, n)
	for i := range m.Devices {
		p := &m.Devices[i]
		if p.Device, err = d.name(); err != nil {
			return err
		}
		since, err := d.uvarint()
		if err != nil {
			return err
		}
		if since > 1<<63-1 {
			return errors.New("since out of range")
		}
		p.Since = int64(since)
		if p.Present, err = d.bool(); err != nil {
			return err
		}
	}
	return nil
}

func (m *Deliver) appendBody(dst []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(m.Commands)))
	for i := range m.Commands {
		dst = AppendCommand(dst, &m.Commands[i])
	}
	return dst
}

func (m *Deliver) decodeBody(d *decoder) (err error) {
	m.Commands, err = d.commands()
	return err
}

func (m *Result) appendBody(dst []byte) []byte {
	dst = appendString(dst, m.Device)
	dst = appendString(dst, m.CID)
	dst = appendString(dst, m.Status)
	return appendBytes(dst, m.Payload)
}

func (m *Result) decodeBody(d *decoder) (err error) {
	if m.Device, err = d.name(); err != nil {
		return err
	}
	if m.CID, err = d.name(); err != nil {
		return err
	}
	if m.Status, err = d.name(); err != nil {
		return err
	}
	m.Payload, err = d.bytes()
	return err
}

const commandVersion = 1

// AppendCommand appends the encoding of c to dst: the form a home keeps in
// its log and sends in Reply and Deliver.
func AppendCommand(dst []byte, c *Command) []byte {
	dst = append(dst, commandVersion)
	dst = appendString(dst, c.ID)
	dst = appendString(dst, c.Device)
	dst = appendString(dst, c.Name)
	dst = appendBytes(dst, c.Payload)
	dst = appendString(dst, c.Key)
	dst = append(dst, byte(c.State))
	for _, t := range [...]int64{c.Created, c.Expires, c.Sent, c.Done} {
		dst = binary.AppendUvarint(dst, uint64(t))
	}
	dst = appendString(dst, c.Status)
	return appendBytes(dst, c.Result)
}

// DecodeCommand decodes one command that is the whole of b; its byte
// slices alias b.
func DecodeCommand(b []byte) (Command, error) {
	d := &decoder{b: b}
	c, err := d.command()
	if err == nil && len(d.b) != 0 {
		err = fmt.Errorf("%d trailing bytes", len(d.b))
	}
	if err != nil {
		return Command{}, fmt.Errorf("%w: command: %w", ErrInvalid, err)
	}
	return c, nil
}

func (d *decoder) command() (c Command, err error) {
	v, err := d.byte()
	if err != nil {
		return c, err
	}
	if v != commandVersion {
		return c, fmt.Errorf("command version %d", v)
	}
	if c.ID, err = d.name(); err != nil {
		return c, err
	}
	if c.Device, err = d.name(); err != nil {
		return c, err
	}
	if c.Name, err = d.name(); err != nil {
		return c, err
	}
	if c.Payload, err = d.bytes(); err != nil {
		return c, err
	}
	if c.Key, err = d.name(); err != nil {
		return c, err
	}
	s, err := d.byte()
	if err != nil {
		return c, err
	}
	if s == 0 || s > byte(StateCancelled) {
		return c, fmt.Errorf("state %d", s)
	}
	c.State = CommandState(s)
	for _, t := range [...]*int64{&c.Created, &c.Expires, &c.Sent, &c.Done} {
		v, err := d.uvarint()
		if err != nil {
			return c, err
		}
		if v > 1<<63-1 {
			return c, errors.New("time out of range")
		}
		*t = int64(v)
	}
	if c.Status, err = d.name(); err != nil {
		return c, err
	}
	c.Result, err = d.bytes()
	return c, err
}

func (d *decoder) commands() ([]Command, error) {
	n, err := d.uvarint()
	if err != nil {
		return nil, err
	}
	if n > uint64(len(d.b))/16 { // every command takes more than sixteen bytes
		return nil, errShort
	}
	cs := make([]Command, n)
	for i := range cs {
		if cs[i], err = d.command(); err != nil {
			return nil, err
		}
	}
	return cs, nil
}

func (d *decoder) byte() (byte, error) {
	if len(d.b) == 0 {
		return 0, errShort
	}
	b := d.b[0]
	d.b = d.b[1:]
	return b, nil
}

func (d *decoder) bool() (bool, error) {
	b, err := d.byte()
	if err != nil {
		return false, err
	}
	if b > 1 {
		return false, fmt.Errorf("boolean %d", b)
	}
	return b == 1, nil
}
