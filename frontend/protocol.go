package frontend

import (
	"strconv"

	"github.com/coder/websocket"
)

// Error codes sent to devices in error frames. They are part of device protocol
// v1 (docs/protocol.md) and never change meaning.
const (
	codeInvalidJSON    = "invalid_json"    // frame is not valid JSON; frame dropped
	codeInvalidMessage = "invalid_message" // valid JSON of the wrong shape; message dropped
	codeTooLarge       = "too_large"       // message or batch over its limit; dropped
	codeBadTimestamp   = "bad_timestamp"   // "ts" unparseable or out of range; message dropped
	codeDeviceMismatch = "device_mismatch" // "device" differs from the token subject; message dropped
	codeRateLimited    = "rate_limited"    // over the device's rate; frame and later ones not accepted, connection closes 1013
	codeOverloaded     = "overloaded"      // WAL at its bound; frame and later ones not accepted, connection closes 1013
	codeUnauthorized   = "unauthorized"    // token expired during the connection; closes 1008
)

// Close reasons: metric label values and, for the codes a device sees, the
// close frame's reason text.
const (
	reasonPeer        = "peer"         // the device closed or the connection broke
	reasonDrain       = "drain"        // server shutdown
	reasonOverloaded  = "overloaded"   // WAL full
	reasonRateLimited = "rate_limited" // device over its rate
	reasonExpired     = "unauthorized" // token expired
	reasonReplaced    = "replaced"     // a newer connection for the same device
	reasonTooBig      = "too_big"      // frame over the read limit (1009)
	reasonPingTimeout = "ping_timeout" // no pong within the timeout
	reasonWriteFailed = "write_failed" // a write failed or missed its deadline
	reasonInternal    = "internal"     // the WAL failed
)

// Close codes used by the server.
const (
	closeNormal         = websocket.StatusNormalClosure   // 1000
	closeGoingAway      = websocket.StatusGoingAway       // 1001
	closePolicy         = websocket.StatusPolicyViolation // 1008
	closeTooBig         = websocket.StatusMessageTooBig   // 1009
	closeInternal       = websocket.StatusInternalError   // 1011
	closeServiceRestart = websocket.StatusServiceRestart  // 1012
	closeTryAgainLater  = websocket.StatusTryAgainLater   // 1013
)

// appendAck appends {"type":"ack","seq":N,"ids":[...]} to dst; ids is a
// comma-separated list of raw JSON ids, possibly empty.
func appendAck(dst []byte, seq uint64, ids []byte) []byte {
	dst = append(dst, `{"type":"ack","seq":`...)
	dst = strconv.AppendUint(dst, seq, 10)
	if len(ids) > 0 {
		dst = append(dst, `,"ids":[`...)
		dst = append(dst, ids...)
		dst = append(dst, ']')
	}
	return append(dst, '}')
}

// appendError appends an error frame. index < 0 omits the batch index, a nil id
// omits the id, retryMS <= 0 omits the retry hint.
func appendError(dst []byte, code string, seq uint64, index int, id []byte, retryMS int64, reason string) []byte {
	dst = append(dst, `{"type":"error","code":"`...)
	dst = append(dst, code...)
	dst = append(dst, `","seq":`...)
	dst = strconv.AppendUint(dst, seq, 10)
	if index >= 0 {
		dst = append(dst, `,"index":`...)
		dst = strconv.AppendInt(dst, int64(index), 10)
	}
	if id != nil {
		dst = append(dst, `,"id":`...)
		dst = append(dst, id...)
	}
	if retryMS > 0 {
		dst = append(dst, `,"retry_after_ms":`...)
		dst = strconv.AppendInt(dst, retryMS, 10)
	}
	dst = append(dst, `,"message":`...)
	dst = appendJSONString(dst, reason)
	return append(dst, '}')
}

func appendJSONString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			dst = append(dst, '\\', c)
		case c < 0x20:
			dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		default:
			dst = append(dst, c)
		}
	}
	return append(dst, '"')
}
