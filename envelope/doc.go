// Package envelope is the binary record the frontend appends to its WAL for every
// accepted device message, and that every later tier reads back.
//
// An envelope carries the device id, the receive time fixed at the first receipt
// (unix nanoseconds, never changed by retransmission between tiers), the device's
// own timestamp when it sent one, the id of the frontend that received it, and the
// message's raw JSON payload exactly as the device sent it.
//
// The identity of a message in the system is (origin frontend id, WAL index): the
// index is the position of the envelope in the origin frontend's WAL and is
// therefore not stored inside the envelope. Later tiers drop repeats by that pair.
//
// Wire layout, versions 1 and 2 (all integers little endian):
//
//	offset  size      field
//	0       1         version (1 or 2)
//	1       1         flags (bit 0: device time present; bit 1, version 2
//	                  only and always set there: topic present; other bits 0)
//	2       uvarint   len(frontend id), then the bytes (1..MaxIDBytes)
//	.       uvarint   len(device id), then the bytes (1..MaxIDBytes)
//	.       8         receive time, unix nanoseconds (int64)
//	.       8         device time, unix nanoseconds (int64), only if flag bit 0
//	.       uvarint   len(topic), then the bytes (1..MaxTopicBytes), only if flag bit 1
//	.       uvarint   len(payload), then the bytes
//	end-4   4         CRC32C (Castagnoli) of every preceding byte
//
// Version 2 added the topic: the part of an MQTT topic after devices/{id}/.
// An envelope without a topic is still written as version 1, so a reader
// that knows only version 1 (a tier not yet upgraded) reads every message
// of WebSocket devices and of MQTT devices publishing to devices/{id}; the
// decoder reads both versions.
//
// The decoder is strict: an unknown version, an unknown flag, a length that runs
// past the record, trailing bytes or a checksum mismatch are all errors, so a
// record is either exactly what was encoded or rejected.
package envelope
