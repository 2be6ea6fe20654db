package frontend

import (
	"bytes"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/ingest-io/ingest/protocol"
)

// Commands over MQTT (Options.Downlink). A session that subscribes to
// devices/{id}/commands, its own id, is attached to the Link as a WebSocket
// connection is when it opens: from then on the device's home delivers its
// commands here, and each is written as a PUBLISH to that topic whose
// payload is the WebSocket command frame. The device answers each on
// devices/{id}/commands/{command id}/result; the answer goes to the home
// as a WebSocket command_result does. Which commands are sent, how many are
// unanswered at a time and when one is sent again is the home's, the same
// for both transports.

// Reason codes of SUBACK refusals (MQTT 5; 3.1.1 has only 0x80).
const (
	rcTopicFilterInvalid    byte = 0x8F
	rcSharedNotSupported    byte = 0x9E
	rcWildcardsNotSupported byte = 0xA2
)

// maxCommandsUnacked bounds the command publishes an MQTT 3.1.1 session
// has unacknowledged (an MQTT 5 client sets its own, Receive Maximum).
const maxCommandsUnacked = 64

func commandsTopic(device string) string { return "devices/" + device + "/commands" }

// subscribe answers SUBSCRIBE: devices/{id}/commands, with the session's
// own id, is granted at QoS 1 (or 0, if asked for 0), and every other
// filter refused. A first grant attaches the session to the Link.
func (c *mqttConn) subscribe(pk *packets.Packet) error {
	if len(pk.Properties.SubscriptionIdentifier) > 0 {
		// The CONNACK said Subscription Identifiers Available 0.
		return protocolError(rcSubIDsNotSupported, "subscription identifiers are not supported")
	}
	codes := make([]byte, len(pk.Filters))
	why, grant := "", -1
	for i, f := range pk.Filters {
		code, reason := c.checkFilter(f.Filter)
		if code == 0 {
			code = min(f.Qos, 1)
			grant = int(code)
		} else if c.version == mqtt311 {
			code = rcUnspecified // 3.1.1's only failure return code
		}
		if why == "" {
			why = reason
		}
		codes[i] = code
	}
	out := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Suback},
		ProtocolVersion: c.version,
		PacketID:        pk.PacketID,
		ReasonCodes:     codes,
		Properties:      packets.Properties{ReasonString: why},
		Mods:            c.mods(),
	}
	// SUBACK first, so that the commands the grant brings follow it.
	c.writePacket(&out, out.SubackEncode)
	if grant < 0 {
		return nil
	}
	c.mu.Lock()
	c.subQoS = byte(grant)
	attach := !c.subscribed && !c.stopped
	c.subscribed = c.subscribed || attach
	c.cond.Broadcast()
	c.mu.Unlock()
	if attach {
		c.att = c.s.opts.Downlink.Attach(c.device, c.writeCommand)
	}
	return nil
}

// checkFilter returns 0 for the session's own commands topic, or the MQTT
// 5 reason code that refuses filter, and why.
func (c *mqttConn) checkFilter(filter string) (byte, string) {
	switch {
	case c.s.opts.Downlink == nil:
		return rcImplementation, "this frontend serves no commands: nothing can be subscribed to"
	case filter == commandsTopic(c.device):
		return 0, ""
	case strings.ContainsAny(filter, "+#"):
		return rcWildcardsNotSupported, "wildcards are not supported: subscribe to " + commandsTopic(c.device)
	case strings.HasPrefix(filter, "$share/"):
		return rcSharedNotSupported, "shared subscriptions are not supported: subscribe to " + commandsTopic(c.device)
	case strings.HasPrefix(filter, "devices/") && strings.HasSuffix(filter, "/commands"):
		return rcNotAuthorized, "a device subscribes to its own commands only: " + commandsTopic(c.device)
	}
	return rcTopicFilterInvalid, "the only topic served is " + commandsTopic(c.device)
}

// unsubscribe answers UNSUBSCRIBE; the commands topic detaches the session
// from the Link.
func (c *mqttConn) unsubscribe(pk *packets.Packet) error {
	codes := bytes.Repeat([]byte{rcNoSubscription}, len(pk.Filters))
	for i, f := range pk.Filters {
		if c.att != nil && f.Filter == commandsTopic(c.device) {
			codes[i] = rcSuccess
			c.detach()
		}
	}
	out := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Unsuback},
		ProtocolVersion: c.version,
		PacketID:        pk.PacketID,
		ReasonCodes:     codes,
	}
	c.writePacket(&out, out.UnsubackEncode)
	return nil
}

// detach ends the session's attachment to the Link, if it has one. Called
// by the reader, or once it has returned.
func (c *mqttConn) detach() {
	if c.att == nil {
		return
	}
	c.mu.Lock()
	c.subscribed = false
	c.cond.Broadcast()
	c.mu.Unlock()
	c.att.Detach()
	c.att = nil
}

var (
	errNotSubscribed  = errors.New("session not subscribed to its commands")
	errCommandExpired = errors.New("command expired while it waited for the device's receive maximum")
)

// writeCommand writes a command frame from the Link as a PUBLISH to the
// commands topic, at the granted QoS. It waits while the client has as
// many command publishes unacknowledged as it accepts (its Receive
// Maximum), and gives up once the session stops or unsubscribes (the home
// sends an unanswered command again) or the command expires (its home
// reports it expired; the device must not get it after that).
func (c *mqttConn) writeCommand(frame []byte, expires time.Time) error {
	c.mu.Lock()
	expired := false
	if c.subQoS > 0 && len(c.unacked) >= c.sendMax && !expires.IsZero() {
		t := time.AfterFunc(time.Until(expires), func() {
			c.mu.Lock()
			expired = true
			c.cond.Broadcast()
			c.mu.Unlock()
		})
		defer t.Stop()
	}
	for !c.stopped && c.subscribed && !expired && c.subQoS > 0 && len(c.unacked) >= c.sendMax {
		c.cond.Wait()
	}
	if c.stopped || !c.subscribed {
		c.mu.Unlock()
		return errNotSubscribed
	}
	if expired || !expires.IsZero() && !time.Now().Before(expires) {
		c.mu.Unlock()
		return errCommandExpired
	}
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Publish, Qos: c.subQoS},
		ProtocolVersion: c.version,
		TopicName:       commandsTopic(c.device),
		Payload:         frame,
		Mods:            c.mods(),
	}
	if pk.FixedHeader.Qos > 0 {
		for {
			c.nextID++
			if _, used := c.unacked[c.nextID]; c.nextID != 0 && !used {
				break
			}
		}
		pk.PacketID = c.nextID
		if c.unacked == nil {
			c.unacked = make(map[uint16]struct{})
		}
		c.unacked[pk.PacketID] = struct{}{}
	}
	c.mu.Unlock()
	if c.version == mqtt5 {
		pk.Properties.PayloadFormat, pk.Properties.PayloadFormatFlag = 1, true
		pk.Properties.ContentType = "application/json"
	}
	var b bytes.Buffer
	pk.PublishEncode(&b)
	if c.clientMax > 0 && b.Len() > int(c.clientMax) {
		// The client would end the session: the command stays unanswered
		// and expires at its time to live.
		c.s.lg.Warn("command larger than the device's maximum packet size; not sent", "device", c.device, "bytes", b.Len(), "max", c.clientMax)
		c.mu.Lock()
		delete(c.unacked, pk.PacketID)
		c.cond.Broadcast()
		c.mu.Unlock()
		return errors.New("command publish over the client's maximum packet size")
	}
	return c.write(b.Bytes())
}

// puback takes the client's PUBACK of a command publish. The command is
// delivered; it stays "sent" until the device answers on its result topic.
func (c *mqttConn) puback(id uint16, code byte) error {
	c.mu.Lock()
	_, ok := c.unacked[id]
	delete(c.unacked, id)
	c.cond.Broadcast()
	c.mu.Unlock()
	if !ok {
		return protocolError(rcProtocolError, "PUBACK of packet id "+strconv.Itoa(int(id))+", which the server has not sent")
	}
	if code >= rcUnspecified {
		c.s.m.mqtt.commandsRefused.Inc()
		c.s.lg.Debug("mqtt device refused a command publish", "device", c.device, "code", code)
	} else {
		c.s.m.mqtt.commandsDelivered.Inc()
	}
	return nil
}

// answer takes a publish under devices/{id}/commands, the answer to a
// command: carried to the device's home, and acknowledged in its place
// among the session's publishes; or refused as any publish is.
func (c *mqttConn) answer(it *mqttItem, rest string, payload []byte, now time.Time) error {
	if c.s.opts.Downlink == nil {
		return c.refuse(it, rcTopicNameInvalid, "this frontend serves no commands", now)
	}
	r, code, why := decodeAnswer(rest, payload)
	if code != 0 {
		c.s.m.rejected.WithLabelValues(protocol.CodeInvalidMessage).Inc()
		return c.refuse(it, code, why, now)
	}
	c.s.answerCommand(c.device, r)
	return c.enqueue(it, nil, "", now)
}

// isCommandsTopic reports whether rest, the topic after devices/{id}/, is
// the commands topic or below it: not data.
func isCommandsTopic(rest string) bool {
	return rest == "commands" || strings.HasPrefix(rest, "commands/")
}

// decodeAnswer decodes an answer published to devices/{id}/rest, where
// rest is commands/{command id}/result, with the payload of a
// command_result frame in which "__type" and "id" may be left out. It
// returns the answer, or the MQTT 5 reason code that refuses it and why.
// The answer aliases rest and payload.
func decodeAnswer(rest string, payload []byte) (protocol.CommandResult, byte, string) {
	const pre, suf = "commands/", "/result"
	if len(rest) <= len(pre)+len(suf) || !strings.HasPrefix(rest, pre) || !strings.HasSuffix(rest, suf) {
		return protocol.CommandResult{}, rcTopicNameInvalid, "answers go to devices/{device id}/commands/{command id}/result"
	}
	id := rest[len(pre) : len(rest)-len(suf)]
	if strings.Contains(id, "/") {
		return protocol.CommandResult{}, rcTopicNameInvalid, "answers go to devices/{device id}/commands/{command id}/result"
	}
	r, err := protocol.DecodeCommandAnswer(payload, id)
	if err != nil {
		return protocol.CommandResult{}, rcPayloadInvalid, protocol.CodeInvalidMessage + ": " + err.Error()
	}
	return r, 0, ""
}
