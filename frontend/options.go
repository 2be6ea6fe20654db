package frontend

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/ingest-io/ingest/downlink"
	"github.com/ingest-io/ingest/internal/defaults"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/auth"
	"github.com/ingest-io/ingest/envelope"
	"github.com/ingest-io/ingest/protocol"
)

// Options configure a Server. A zero field means its default (DefaultOptions);
// ID and either Auth keys or InsecureNoAuth are required.
type Options struct {
	// Listener is where devices connect; the Server serves HTTP on it.
	// Required: the caller binds it (tests on 127.0.0.1:0), so the address
	// is known before Run. The Server owns it from New on: Run closes it
	// when it returns, Close if Run never ran, New itself if it fails.
	Listener net.Listener

	// ID names this frontend in every envelope it writes. Together with the WAL
	// index it is a message's identity, so it must stay the same for as long as
	// the WAL directory lives (a StatefulSet pod name or a hostname).
	ID string

	// Auth configures JWT verification of devices: each configured key kind
	// enables exactly one algorithm; tokens signed with any other, "none"
	// included, are refused. A token's subject is the device id.
	Auth auth.Options
	// InsecureNoAuth accepts devices without a token, taking the device id from
	// the "device" query parameter. New then refuses a Listener that is not
	// on a loopback address, and Run logs a warning.
	InsecureNoAuth bool

	// OriginPatterns lists the browser origins allowed to connect, as in
	// websocket.AcceptOptions; requests without an Origin header (devices) and
	// same-host origins are always allowed. Default none.
	OriginPatterns []string

	// MaxConnections bounds open device connections; past it handshakes get
	// HTTP 503 with Retry-After. Default 20,000.
	MaxConnections int
	// MaxFrameBytes is the WebSocket read limit: a larger frame closes the
	// connection with 1009. Default 256 KiB.
	MaxFrameBytes int
	// MaxMessageBytes bounds one message (one JSON object); larger ones are
	// rejected with too_large. Default 64 KiB.
	MaxMessageBytes int
	// MaxBatchMessages bounds the messages in one array frame; a larger batch is
	// rejected whole with too_large. Default 500.
	MaxBatchMessages int
	// MaxFields bounds the fields of one message (its numbers, booleans and
	// strings, nested ones included): each becomes a series in the store.
	// A message with more is rejected with too_many_fields. Default 1,000.
	MaxFields int
	// MaxFieldNameBytes bounds a field's name flattened with dots
	// ("gps.lat"); a longer one rejects its message with invalid_field.
	// Default 256.
	MaxFieldNameBytes int
	// MaxStringBytes bounds a string value, escapes decoded; a longer one
	// rejects its message with invalid_field. Default 1,024, the storage
	// writer's own bound on a string it stores.
	MaxStringBytes int
	// MaxPendingBytes bounds the envelopes of one connection waiting for the
	// WAL, with the ids and the record of each frame waiting for its ack
	// (so that frames without messages are bounded too); past it the
	// server stops reading from that connection until the WAL catches up
	// (TCP backpressure). Default 1 MiB.
	MaxPendingBytes int

	// Rate and Burst bound messages per second per device (token bucket).
	// Default 1,000/s with a burst of 2,000; Burst must be at least
	// MaxBatchMessages.
	Rate  float64
	Burst int

	// MaxFutureSkew is how far ahead of the server's clock a device "ts" may
	// be. Default protocol.DefaultMaxFutureSkew (1h).
	MaxFutureSkew time.Duration

	// PingInterval is how long a connection may stay silent before the server
	// pings it; PongTimeout is how long it waits for the pong before closing.
	// Defaults 30s and 15s.
	PingInterval time.Duration
	PongTimeout  time.Duration
	// WriteTimeout bounds every write to a device. Default 10s. For a
	// WebSocket device over plain TCP it bounds each write to the socket
	// that has to wait, and a write the socket takes at once sets no
	// deadline: a frame that fits the connection's 512-byte write buffer
	// (an ack) is one such write, a larger one up to two, so up to twice
	// WriteTimeout. Over TLS it bounds each frame.
	WriteTimeout time.Duration
	// HandshakeTimeout bounds reading the HTTP request headers. Default 10s.
	HandshakeTimeout time.Duration
	// OverloadRetryAfter is the retry hint sent with overloaded. Default 1s.
	OverloadRetryAfter time.Duration

	// DrainWindow is the time over which connections are closed at shutdown.
	// Default 5s.
	DrainWindow time.Duration
	// ShutdownCode is the close code sent when draining: 1001 (going away,
	// the default) or 1012 (service restart).
	ShutdownCode websocket.StatusCode

	// MQTTListener, if set, is where MQTT devices connect over TCP; it may
	// be a TLS listener (crypto/tls.NewListener): sessions use only the
	// net.Conn interface. MQTT over WebSocket is always served at MQTTPath
	// on Listener. The Server owns it as it owns Listener; with
	// InsecureNoAuth it must be on a loopback address too.
	MQTTListener net.Listener
	// MQTT configures MQTT sessions: over TCP on MQTTListener, and over
	// WebSocket at /mqtt on the device port.
	MQTT MQTTOptions

	// Gatherer, when set, is served at /metrics.
	Gatherer prometheus.Gatherer
	// Handlers are more handlers served on Listener, by http.ServeMux
	// pattern (e.g. "/debug/pprof/"). They must not claim the server's own
	// paths.
	Handlers map[string]http.Handler

	// Revoked, when set, reports whether a device is disabled (the device
	// registry's disabled): its handshake is refused, however valid its
	// token (WebSocket: HTTP 403 with the code revoked; MQTT: CONNACK
	// 0x05 not authorized in 3.1.1, 0x8A banned in 5). Server.CloseRevoked
	// closes the open connections of the devices it reports. It is called
	// twice per handshake (before the upgrade, and when the session is
	// registered, under the lock CloseRevoked holds) and by CloseRevoked:
	// it must not block, nor call back into the Server.
	Revoked func(device string) bool
	// Downlink, when set, carries commands to the devices connected here
	// and their answers back, and the command API (docs/commands.md) is
	// served on Listener, authenticated by application tokens of the same
	// keys as devices' (with scope "commands"). The caller runs it. Nil:
	// no commands; a command_result frame is then answered with an
	// invalid_message error frame naming frame 0 (it is not numbered,
	// as it is not by the device).
	Downlink *downlink.Link
	// CommandMaxTTL bounds a command's time to live at the API. Default 7
	// days; keep it within the homes' own bound.
	CommandMaxTTL time.Duration
}

// MQTTOptions bound MQTT sessions (docs/mqtt.md). The device rules (auth,
// message limits, rate, WAL) are the Server's own.
type MQTTOptions struct {
	// MaxPacketBytes bounds one MQTT control packet; a larger one ends the
	// session (MQTT 5: DISCONNECT 0x95). MQTT 5 clients are told it as the
	// Maximum Packet Size. Default MaxFrameBytes.
	MaxPacketBytes int
	// ReceiveMaximum bounds the QoS 1 and 2 publishes a session may have
	// unacknowledged. MQTT 5 clients are told it in CONNACK and a session
	// that exceeds it ends with DISCONNECT 0x93; an MQTT 3.1.1 session is
	// no longer read while it has that many. Default 128, at most 65,535.
	ReceiveMaximum int
	// ConnectTimeout bounds the wait for CONNECT once a connection is
	// open. Default HandshakeTimeout.
	ConnectTimeout time.Duration
}

// DefaultOptions returns the defaults that zero fields stand for.
func DefaultOptions() Options {
	return Options{
		MaxConnections:     20000,
		MaxFrameBytes:      256 << 10,
		MaxMessageBytes:    protocol.DefaultMaxMessageBytes,
		MaxBatchMessages:   protocol.DefaultMaxMessages,
		MaxFields:          protocol.DefaultMaxFields,
		MaxFieldNameBytes:  protocol.DefaultMaxNameBytes,
		MaxStringBytes:     protocol.DefaultMaxStringBytes,
		MaxPendingBytes:    1 << 20,
		Rate:               1000,
		Burst:              2000,
		MaxFutureSkew:      protocol.DefaultMaxFutureSkew,
		PingInterval:       30 * time.Second,
		PongTimeout:        15 * time.Second,
		WriteTimeout:       10 * time.Second,
		HandshakeTimeout:   10 * time.Second,
		OverloadRetryAfter: time.Second,
		DrainWindow:        5 * time.Second,
		ShutdownCode:       protocol.CloseGoingAway,
		MQTT:               MQTTOptions{ReceiveMaximum: defaultReceiveMaximum},
	}
}

func (o Options) withDefaults() (Options, error) {
	d := DefaultOptions()
	defaults.Fill(&o, d)
	defaults.Zero(&o.MQTT.MaxPacketBytes, o.MaxFrameBytes)
	defaults.Zero(&o.MQTT.ReceiveMaximum, defaultReceiveMaximum)
	defaults.Zero(&o.MQTT.ConnectTimeout, o.HandshakeTimeout)

	if o.Listener == nil {
		return o, errors.New("check listener: nil")
	}
	if err := envelope.CheckID(o.ID); err != nil {
		return o, fmt.Errorf("check frontend id: %w", err)
	}
	if o.InsecureNoAuth == o.Auth.Configured() {
		return o, errors.New("check auth: configure JWT keys or set InsecureNoAuth, not both or neither")
	}
	if o.MaxConnections < 0 || o.MaxFrameBytes < 0 || o.MaxMessageBytes < 0 || o.MaxBatchMessages < 0 ||
		o.MaxFields < 0 || o.MaxFieldNameBytes < 0 || o.MaxStringBytes < 0 ||
		o.MaxPendingBytes < 0 || o.Rate < 0 || o.Burst < 0 || o.PingInterval < 0 || o.PongTimeout < 0 ||
		o.WriteTimeout < 0 || o.HandshakeTimeout < 0 || o.OverloadRetryAfter < 0 || o.DrainWindow < 0 || o.MaxFutureSkew < 0 {
		return o, errors.New("check options: limits must not be negative")
	}
	if o.MaxMessageBytes > o.MaxFrameBytes {
		return o, fmt.Errorf("check options: MaxMessageBytes %d exceeds MaxFrameBytes %d", o.MaxMessageBytes, o.MaxFrameBytes)
	}
	if o.Burst < o.MaxBatchMessages {
		return o, fmt.Errorf("check options: Burst %d is below MaxBatchMessages %d, so a full batch could never pass", o.Burst, o.MaxBatchMessages)
	}
	if o.MQTT.MaxPacketBytes < 0 || o.MQTT.ReceiveMaximum < 0 || o.MQTT.ReceiveMaximum > 65535 || o.MQTT.ConnectTimeout < 0 {
		return o, errors.New("check options: MQTT limits must be positive, ReceiveMaximum at most 65535")
	}
	if o.MQTT.MaxPacketBytes > maxMQTTPacketBytes {
		return o, fmt.Errorf("check options: MQTT MaxPacketBytes %d exceeds the protocol's %d", o.MQTT.MaxPacketBytes, maxMQTTPacketBytes)
	}
	if o.ShutdownCode != protocol.CloseGoingAway && o.ShutdownCode != protocol.CloseServiceRestart {
		return o, fmt.Errorf("check options: ShutdownCode %d is neither 1001 nor 1012", o.ShutdownCode)
	}
	return o, nil
}

// limits are the bounds every device frame is parsed under, whatever
// carried it.
func (o *Options) limits() protocol.Limits {
	return protocol.Limits{
		MaxMessages:     o.MaxBatchMessages,
		MaxMessageBytes: o.MaxMessageBytes,
		MaxFields:       o.MaxFields,
		MaxNameBytes:    o.MaxFieldNameBytes,
		MaxStringBytes:  o.MaxStringBytes,
	}
}
