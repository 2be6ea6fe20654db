package loadgen

import (
	"fmt"

	"github.com/ingest-io/ingest/protocol"
)

// errBadReply wraps every error of a server text frame that is not one
// device protocol v1 allows.
var errBadReply = protocol.ErrInvalidServerFrame

// parseReply decodes a server text frame: an ack or an error, or a type
// this version does not know, which devices ignore.
func parseReply(p []byte) (protocol.ServerFrame, error) {
	f, err := protocol.DecodeServerFrame(p)
	if err != nil {
		return f, err
	}
	switch f.Type {
	case protocol.TypeError:
		if f.Code == "" {
			return f, fmt.Errorf("%w: error frame without a code", errBadReply)
		}
	}
	return f, nil
}
