package loadgen

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// MQTT devices: a target mqtt://host:port (MQTT 3.1.1) or mqtt5://host:port
// (MQTT 5) makes each device an MQTT client that publishes every message as
// one QoS 1 PUBLISH to devices/{id}, with a window of publishes in flight,
// and settles a message on its PUBACK. PUBACKs come in the order of the
// publishes, so the k-th PUBACK of a connection settles its k-th publish,
// as the k-th frame's ack does over WebSocket; everything else (numbering,
// pacing, resending after a reconnect) is the same. The token is the
// CONNECT password, the device id the client id.

// mqttPort is MQTT's registered port.
const mqttPort = "1883"

// mqttCode is the error count of an MQTT reason code: "mqtt_0x99".
func mqttCode(code byte) string { return "mqtt_0x" + strconv.FormatUint(uint64(code), 16) }

// MQTT 5 reason codes the generator acts on.
const (
	mqttQuotaExceeded   byte = 0x97 // not stored, the session ends: send again on the next
	mqttServerBusy      byte = 0x89
	mqttSessionTakenOff byte = 0x8E // a newer connection of the device took over
)

// dialMQTT opens an MQTT session: TCP, CONNECT, CONNACK. It returns the
// bytes read past the CONNACK.
func dialMQTT(ctx context.Context, t target, local net.Addr, clientID, token string, timeout time.Duration) (net.Conn, []byte, error) {
	nc, err := dialTCP(ctx, t.addr, local, timeout)
	if err != nil {
		return nil, nil, err
	}
	stop := handshakeWithin(ctx, nc, timeout)
	defer stop()
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: t.mqtt,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, ClientIdentifier: clientID}}
	if token != "" {
		pk.Connect.UsernameFlag, pk.Connect.Username = true, []byte(clientID)
		pk.Connect.PasswordFlag, pk.Connect.Password = true, []byte(token)
	}
	var b bytes.Buffer
	if err := pk.ConnectEncode(&b); err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("encode connect: %w", err)
	}
	if _, err := nc.Write(b.Bytes()); err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("write connect: %w", err)
	}
	buf := make([]byte, 0, 512)
	for {
		typ, body, n, ok, err := mqttPacket(buf)
		if err != nil {
			nc.Close()
			return nil, nil, err
		}
		if ok {
			if typ != packets.Connack {
				nc.Close()
				return nil, nil, fmt.Errorf("%w: %s before CONNACK", errProtocol, packets.PacketNames[typ])
			}
			ca := packets.Packet{ProtocolVersion: t.mqtt, FixedHeader: packets.FixedHeader{Type: typ, Remaining: len(body)}}
			if err := ca.ConnackDecode(body); err != nil {
				nc.Close()
				return nil, nil, fmt.Errorf("%w: connack: %v", errProtocol, err)
			}
			if ca.ReasonCode != 0 {
				nc.Close()
				return nil, nil, &ConnackError{Code: ca.ReasonCode}
			}
			if !stop() {
				nc.Close()
				return nil, nil, ctx.Err()
			}
			nc.SetDeadline(time.Time{})
			return nc, append([]byte(nil), buf[n:]...), nil
		}
		if len(buf) == cap(buf) {
			nc.Close()
			return nil, nil, fmt.Errorf("%w: CONNACK over %d bytes", errProtocol, cap(buf))
		}
		m, err := nc.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+m]
		if err != nil {
			nc.Close()
			if ctx.Err() != nil {
				return nil, nil, ctx.Err()
			}
			return nil, nil, fmt.Errorf("read connack: %w", err)
		}
	}
}

// ConnackError is a refused MQTT CONNECT.
type ConnackError struct{ Code byte }

func (e *ConnackError) Error() string { return fmt.Sprintf("connect refused: CONNACK %#x", e.Code) }

// refused reports whether connecting again with the same credentials
// cannot help: bad credentials or client id, not authorized.
func (e *ConnackError) refused() bool {
	switch e.Code {
	case 0x02, 0x04, 0x05, 0x85, 0x86, 0x87:
		return true
	}
	return false
}

// mqttPacket splits the packet at the start of b: its type, its body (after
// the fixed header), its whole length, and whether b holds all of it.
func mqttPacket(b []byte) (typ byte, body []byte, n int, ok bool, err error) {
	if len(b) < 2 {
		return 0, nil, 0, false, nil
	}
	var rem, shift int
	i := 1
	for {
		if i >= len(b) {
			return 0, nil, 0, false, nil
		}
		c := b[i]
		rem |= int(c&0x7f) << shift
		i++
		if c&0x80 == 0 {
			break
		}
		shift += 7
		if shift > 21 {
			return 0, nil, 0, false, fmt.Errorf("%w: remaining length over 4 bytes", errProtocol)
		}
	}
	if rem > maxServerFrame {
		return 0, nil, 0, false, fmt.Errorf("%w: packet of %d bytes", errProtocol, rem)
	}
	if len(b) < i+rem {
		return 0, nil, 0, false, nil
	}
	return b[0] >> 4, b[i : i+rem], i + rem, true, nil
}

// appendPublish appends a QoS 1 PUBLISH of payload to topic with packet id
// id to dst; MQTT 5 adds an empty property list.
func appendPublish(dst []byte, version byte, topic string, id uint16, payload []byte) []byte {
	rem := 2 + len(topic) + 2 + len(payload)
	if version == 5 {
		rem++
	}
	dst = append(dst, packets.Publish<<4|1<<1)
	for {
		c := byte(rem & 0x7f)
		rem >>= 7
		if rem > 0 {
			c |= 0x80
		}
		dst = append(dst, c)
		if rem == 0 {
			break
		}
	}
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(topic)))
	dst = append(dst, topic...)
	dst = binary.BigEndian.AppendUint16(dst, id)
	if version == 5 {
		dst = append(dst, 0)
	}
	return append(dst, payload...)
}

// packetID is the packet id of the k-th publish of a connection (k from 1).
func packetID(k uint64) uint16 { return uint16((k-1)%65535 + 1) }

// handleMQTT handles the whole packets at the start of b, as handle does
// frames: it returns the bytes it took and the highest publish of the
// connection a PUBACK in them settles. A PUBACK must carry the packet id of
// the next publish. MQTT 5 refusals mark their message with the reason
// code; quota exceeded settles nothing until a PUBACK of another kind
// follows it: when the WAL is full, every later publish of the session
// gets one too and the session ends, and the messages go out again; a
// publish larger than the WAL can hold gets one and is dropped, and the
// next PUBACK settles it as refused. A DISCONNECT ends the connection with
// a *closeError.
func (d *device) handleMQTT(b []byte) (int, uint64, error) {
	var r int
	var ackTo uint64
	for {
		typ, body, n, ok, err := mqttPacket(b[r:])
		if err != nil || !ok {
			return r, ackTo, err
		}
		r += n
		switch typ {
		case packets.Puback:
			if len(body) < 2 {
				return r, ackTo, fmt.Errorf("%w: short PUBACK", errProtocol)
			}
			k := d.pubacks + 1
			if id := binary.BigEndian.Uint16(body); id != packetID(k) {
				return r, ackTo, fmt.Errorf("%w: PUBACK %d, want %d", errProtocol, id, packetID(k))
			}
			var code byte
			if len(body) > 2 {
				code = body[2]
			}
			if code == mqttQuotaExceeded {
				// Not stored. Either the WAL is full: every later publish
				// of the session gets its 0x97 too, then the session ends,
				// and they all go out again on the next connection; or
				// this one is larger than the WAL can ever hold: it is
				// dropped, and the session goes on. Which, the next
				// PUBACK of another kind tells; until then none is settled.
				d.f.count(mqttCode(code), 1)
				if d.quota == 0 {
					d.quota = k
				}
				d.pubacks = k
				continue
			}
			if d.quota != 0 {
				// The session went on: the publishes refused since were
				// dropped for good, refused as any other.
				for q := d.quota; q < k; q++ {
					if err := d.rejectMQTT(q, mqttCode(mqttQuotaExceeded)); err != nil {
						return r, ackTo, err
					}
				}
				d.quota = 0
			}
			if code >= 0x80 {
				d.f.count(mqttCode(code), 1)
				if err := d.rejectMQTT(k, mqttCode(code)); err != nil {
					return r, ackTo, err
				}
			}
			d.pubacks = k
			ackTo = k
		case packets.Pingresp:
		case packets.Disconnect:
			code := byte(0)
			if len(body) > 0 {
				code = body[0]
			}
			return r, ackTo, &closeError{code: int(code), reason: "mqtt disconnect", mqtt: true}
		default:
			return r, ackTo, fmt.Errorf("%w: unexpected %s", errProtocol, packets.PacketNames[typ])
		}
	}
}

// rejectMQTT marks publish k of the connection as refused with code.
func (d *device) rejectMQTT(k uint64, code string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if k <= d.ackedTo || k > d.frames {
		return fmt.Errorf("%w: PUBACK for publish %d, acknowledged up to %d of %d", errProtocol, k, d.ackedTo, d.frames)
	}
	m := &d.ring[(d.base+k-1)%uint64(len(d.ring))]
	if m.Code == "" {
		m.Code = code
	}
	return nil
}
