package main

import "strconv"

// message builds a message of about size bytes in the given shape. seq is
// stored as a field (the id is the protocol's acknowledgement id, not
// data); ts is the device time, unique per device. The completeness check
// reads seq back from the store.
func message(shape string, size, dev, seq int, ts int64) []byte {
	return appendMessage(nil, shape, size, dev, uint64(seq), ts)
}

// appendMessage appends message's bytes to dst, without fmt: it runs once
// per message sent, on the cores the engine is measured on.
func appendMessage(dst []byte, shape string, size, dev int, seq uint64, ts int64) []byte {
	start := len(dst)
	dst = append(dst, `{"id":`...)
	dst = strconv.AppendUint(dst, seq, 10)
	dst = append(dst, `,"seq":`...)
	dst = strconv.AppendUint(dst, seq, 10)
	dst = append(dst, `,"ts":`...)
	dst = strconv.AppendInt(dst, ts, 10)
	switch shape {
	case "gps":
		lat := 48.85 + float64(dev%1000)/10000 + float64(seq%100)/100000
		lon := 2.35 + float64(dev/1000)/10000
		dst = append(dst, `,"lat":`...)
		dst = strconv.AppendFloat(dst, lat, 'f', 6, 64)
		dst = append(dst, `,"lon":`...)
		dst = strconv.AppendFloat(dst, lon, 'f', 6, 64)
		dst = append(dst, `,"speed":`...)
		dst = strconv.AppendUint(dst, seq%120, 10)
		dst = append(dst, `,"heading":`...)
		dst = strconv.AppendUint(dst, seq%360, 10)
		dst = append(dst, `,"fix":true`...)
	default:
		dst = append(dst, sensorFields[seq%100]...)
	}
	const note = `,"note":""}`
	if pad := size - (len(dst) - start) - len(note); pad > 0 {
		dst = append(dst, `,"note":"`...)
		for pad > 0 {
			n := min(pad, len(padding))
			dst = append(dst, padding[:n]...)
			pad -= n
		}
		dst = append(dst, '"')
	}
	return append(dst, '}')
}

const padding = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" +
	"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"

// sensorFields are a sensor message's readings, which repeat every 100
// messages: temp, hum, battery and ok.
var sensorFields = func() (t [100][]byte) {
	for i := range t {
		seq := uint64(i)
		b := []byte(`,"temp":`)
		b = strconv.AppendFloat(b, 20+float64(seq%100)/10, 'f', 1, 64)
		b = append(b, `,"hum":`...)
		b = strconv.AppendUint(b, 40+seq%20, 10)
		b = append(b, `,"battery":`...)
		b = strconv.AppendFloat(b, 3.3-float64(seq%50)/100, 'f', 2, 64)
		b = append(b, `,"ok":true`...)
		t[i] = b
	}
	return t
}()
