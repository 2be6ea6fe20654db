package protocol

import "time"

// Path is the endpoint of protocol v1 on a frontend: a WebSocket upgrade
// (GET). A future incompatible protocol gets a new path.
const Path = "/v1/ingest"

// Frame types: the "type" member of every server → device frame.
const (
	TypeAck     = "ack"
	TypeError   = "error"
	TypeCommand = "command" // a command for the device (docs/commands.md)
)

// TypeCommandResult is the "__type" of a device → server command_result
// frame: the device's answer to a command. The member name begins with
// "__", which no data message may use at its top level, so a command_result
// frame can never be mistaken for telemetry.
const TypeCommandResult = "command_result"

// Bounds of a command and its answer.
const (
	// MaxCommandIDBytes bounds a command id.
	MaxCommandIDBytes = 64
	// MaxCommandNameBytes bounds a command's name.
	MaxCommandNameBytes = 128
	// MaxStatusBytes bounds a command_result's status.
	MaxStatusBytes = 64
	// MaxCommandPayloadBytes bounds a command's payload and the payload of
	// its answer, as written.
	MaxCommandPayloadBytes = 16 << 10
	// MaxCommandPayloadDepth bounds the nesting of a command's payload: in
	// its command frame it is one level below the frame's object, which
	// MaxDepth bounds.
	MaxCommandPayloadDepth = MaxDepth - 1
)

// Command result statuses a device answers with. StatusOK marks the command
// acknowledged; any other status (StatusError, StatusRejected, or one of
// the device's own) marks it failed.
const (
	StatusOK       = "ok"
	StatusError    = "error"
	StatusRejected = "rejected"
)

// Error codes, the "code" member of error frames and of a refused
// handshake's body. They are stable: they never change meaning.
const (
	// CodeInvalidJSON: the frame is not valid JSON (or is a binary frame);
	// the whole frame is dropped. The connection stays open.
	CodeInvalidJSON = "invalid_json"
	// CodeInvalidMessage: valid JSON of the wrong shape; the message (or a
	// frame that is neither an object nor an array) is dropped.
	CodeInvalidMessage = "invalid_message"
	// CodeTooLarge: a message over the message limit, or a batch with too
	// many messages, is dropped.
	CodeTooLarge = "too_large"
	// CodeBadTimestamp: "ts" unparseable or out of range; message dropped.
	CodeBadTimestamp = "bad_timestamp"
	// CodeDeviceMismatch: "device" differs from the token's subject;
	// message dropped.
	CodeDeviceMismatch = "device_mismatch"
	// CodeRateLimited: the device is over its rate. The named frame and
	// every later one were not accepted; the connection closes with
	// CloseTryAgainLater.
	CodeRateLimited = "rate_limited"
	// CodeOverloaded: the server's queue is full. The named frame and
	// every later one were not accepted; the connection closes with
	// CloseTryAgainLater. Also the code of a handshake refused with 503.
	CodeOverloaded = "overloaded"
	// CodeUnauthorized: the token expired during the connection (the named
	// frame and later ones were not accepted; closes with
	// ClosePolicyViolation and ReasonUnauthorized), or, in a refused
	// handshake's body, the token was missing or refused (HTTP 401).
	CodeUnauthorized = "unauthorized"
	// CodeTooManyFields: a message with more fields than the server's
	// limit (Limits.MaxFields); message dropped. Message.Rule is
	// RuleTooManyFields.
	CodeTooManyFields = "too_many_fields"
	// CodeInvalidField: a field of the message breaks a field rule (a name
	// that is reserved, not valid Unicode, holds a control character or is
	// too long; a string value that holds U+0000, is not valid Unicode or
	// is too long); message dropped. Message.Rule names the rule.
	CodeInvalidField = "invalid_field"
	// CodeTokenTooLarge: in a refused handshake's body only (HTTP 401), the
	// token is longer than the server's cap (8 KiB by default) and was not
	// verified.
	CodeTokenTooLarge = "token_too_large"
	// CodeRevoked: in a refused handshake's body only (HTTP 403), the
	// device is disabled in the server's device registry; its token,
	// however valid, is not accepted. A connection open when the device is
	// disabled is closed with ClosePolicyViolation and ReasonRevoked.
	CodeRevoked = "revoked"
)

// ErrorCodes returns every error code of an error frame, in the order of
// docs/protocol.md.
func ErrorCodes() []string {
	return []string{CodeInvalidJSON, CodeInvalidMessage, CodeTooLarge, CodeTooManyFields, CodeInvalidField,
		CodeBadTimestamp, CodeDeviceMismatch, CodeRateLimited, CodeOverloaded, CodeUnauthorized}
}

// EndsConnection reports whether an error frame with code means that the
// frame it names and every later frame were not accepted and that the
// server closes the connection: the device resends them, in order, on its
// next connection (after the retry hint, if the frame carried one).
func EndsConnection(code string) bool {
	switch code {
	case CodeRateLimited, CodeOverloaded, CodeUnauthorized:
		return true
	}
	return false
}

// Close codes the server ends a connection with (RFC 6455). They are untyped
// so that they compare with, and convert to, any WebSocket library's status
// type.
const (
	// CloseGoingAway: the frontend is draining (the default at shutdown).
	CloseGoingAway = 1001
	// ClosePolicyViolation: ReasonUnauthorized (token expired),
	// ReasonReplaced (a newer connection of the device took over) or
	// ReasonRevoked (the device was disabled in the registry).
	ClosePolicyViolation = 1008
	// CloseMessageTooBig: a frame over the frame limit.
	CloseMessageTooBig = 1009
	// CloseInternalError: the server's disk failed.
	CloseInternalError = 1011
	// CloseServiceRestart: the frontend is restarting (if so configured).
	CloseServiceRestart = 1012
	// CloseTryAgainLater: ReasonOverloaded or ReasonRateLimited.
	CloseTryAgainLater = 1013
)

// Close reasons: the reason text of the close frames the server sends.
const (
	ReasonShutdown     = "server shutting down" // with CloseGoingAway or CloseServiceRestart
	ReasonUnauthorized = "unauthorized"         // with ClosePolicyViolation: get a fresh token
	ReasonReplaced     = "replaced"             // with ClosePolicyViolation: this connection is stale
	ReasonRevoked      = "revoked"              // with ClosePolicyViolation: the device is disabled; do not reconnect
	ReasonInternal     = "internal error"       // with CloseInternalError
	ReasonOverloaded   = "overloaded"           // with CloseTryAgainLater
	ReasonRateLimited  = "rate_limited"         // with CloseTryAgainLater
)

// Members of a device message that the server reads; every other member is
// data, kept as sent. They are reserved at the top level of a message only.
const (
	MemberID     = "id"     // the device's message id, echoed in acks and errors
	MemberTS     = "ts"     // the device's own time of the message
	MemberDevice = "device" // if present, must be the authenticated device id
)

// Reserved reports whether name is one of the members the server reads
// (MemberID, MemberTS, MemberDevice): not data.
func Reserved(name string) bool {
	switch name {
	case MemberID, MemberTS, MemberDevice:
		return true
	}
	return false
}

// Time bounds of a device's "ts".
const (
	// MinDeviceTime is the earliest "ts" accepted, 2000-01-01T00:00:00Z in
	// unix nanoseconds: a device that sends seconds instead of milliseconds
	// lands in 1970 and is told so.
	MinDeviceTime int64 = 946_684_800 * 1e9
	// DefaultMaxFutureSkew is how far ahead of the server's clock a "ts"
	// may be unless the operator sets another bound.
	DefaultMaxFutureSkew = time.Hour
)

// Field rules: the rule a message rejected with CodeTooManyFields or
// CodeInvalidField broke (Message.Rule). They are stable, like the codes:
// operators count rejections by them.
const (
	RuleTooManyFields = "too_many_fields" // more fields than Limits.MaxFields
	RuleNameTooLong   = "name_too_long"   // a flattened field name over Limits.MaxNameBytes
	RuleNameReserved  = "name_reserved"   // a top-level member name beginning with "__"
	RuleNameInvalid   = "name_invalid"    // an empty member name, a control character or invalid Unicode in one
	RuleStringTooLong = "string_too_long" // a string value over Limits.MaxStringBytes
	RuleStringInvalid = "string_invalid"  // a string value holding U+0000 or invalid Unicode
)

// FieldRules returns every field rule, in the order of docs/protocol.md.
func FieldRules() []string {
	return []string{RuleTooManyFields, RuleNameTooLong, RuleNameReserved, RuleNameInvalid,
		RuleStringTooLong, RuleStringInvalid}
}

// Default bounds of a device frame and of the fields of a message: the
// zero values of Limits stand for them.
const (
	DefaultMaxMessages     = 500
	DefaultMaxMessageBytes = 64 << 10
	DefaultMaxFields       = 1000
	DefaultMaxNameBytes    = 256
	DefaultMaxStringBytes  = 1024
)

// Other bounds of a device frame.
const (
	// MaxMessageIDBytes bounds a message's "id" as written (raw JSON,
	// quotes included).
	MaxMessageIDBytes = 128
	// MaxDepth bounds nesting inside a frame, so that a hostile frame
	// cannot make a decoder recurse without limit.
	MaxDepth = 32
)
