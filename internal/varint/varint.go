// Package varint sizes the unsigned varints of encoding/binary, as the WAL
// frames, the envelope, the wire and the remote-write encoder lay them out.
package varint

import "math/bits"

// Len is the number of bytes binary.AppendUvarint writes for x.
func Len(x uint64) int { return (bits.Len64(x|1) + 6) / 7 }
