package embedded

import (
	"context"

	"github.com/ingest-io/ingest/storage"
)

// Commit is a Write without its fsync: the appends and the commit of one
// transaction, for the benchmark of what a Write costs before the disk.
func Commit(s *TSDB, ctx context.Context, points []storage.Point) error {
	_, _, _, _, err := s.commit(ctx, points)
	return err
}
