// Package protocol is device protocol v1 in code: what devices and the
// frontend say to each other over WebSocket, as docs/protocol.md specifies
// it for firmware engineers. That page is the contract; this package is
// its one implementation, shared by the frontend (which serves it), the Go
// client (which speaks it), the storage writers (which read what devices
// sent) and the load generator.
//
// It holds:
//
//   - the names on the wire: the endpoint path, the frame types, the error
//     codes, the close codes and close reasons the server sends, and the
//     members of a device message the server reads (id, ts, device);
//   - the rules: the earliest device time, the default bound on how far
//     ahead of the server's clock a device time may be, the bound on a
//     message id and on nesting, and Limits: the bounds on a frame and on
//     the fields of a message (how many, how long their names and string
//     values), with the rules every field name and string value follows,
//     so that one device cannot flood a time-series store with series;
//   - the device → server side: Limits.ParseFrame splits a frame (one
//     message or a batch) into messages and validates it strictly, and
//     Message.Check validates a message against the authenticated device
//     and the clock.
//     Every transport that takes device messages (WebSocket today) applies
//     exactly these two, so a message means the same whatever carried it;
//   - the server → device side: AppendAck and AppendError encode the
//     frames, AppendRefusal the body of a refused handshake, and
//     DecodeServerFrame reads them back for a client.
//
// Error codes and close reasons never change meaning within v1: devices in
// the field act on them. A new frame type, code or member is an addition
// that older devices can ignore; anything else needs a new protocol
// version and a new path.
//
// The hot paths allocate nothing: ParseFrame and Check on an accepted
// frame once the caller's message slice has capacity, the encoders once
// the caller's buffer has, and DecodeServerFrame on an ack.
//
// The package imports nothing of the engine, so that every tier and tool
// can import it.
package protocol
