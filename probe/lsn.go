package probe

import "github.com/regentdb/regent/internal/pglsn"

// parseNullLSN parses a nullable LSN column; NULL is 0.
func parseNullLSN(s *string) (uint64, error) {
	if s == nil {
		return 0, nil
	}
	return pglsn.Parse(*s)
}
