// Package pglsn converts PostgreSQL WAL positions (pg_lsn) between their text form and the
// byte positions regent computes with.
package pglsn

import (
	"fmt"
	"strconv"
	"strings"
)

// Parse parses a pg_lsn in its text form, two hexadecimal numbers of at most 8 digits
// separated by a slash ("16/B374D848", either case, leading zeros allowed as pg_waldump writes
// them), into the byte position it stands for (0x16B374D848).
func Parse(s string) (uint64, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok || hi == "" || lo == "" || len(hi) > 8 || len(lo) > 8 {
		return 0, fmt.Errorf("invalid LSN %q: want two hexadecimal numbers of 1-8 digits separated by '/', like \"16/B374D848\"", s)
	}
	h, err := strconv.ParseUint(hi, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("invalid LSN %q: high part: %w", s, err)
	}
	l, err := strconv.ParseUint(lo, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("invalid LSN %q: low part: %w", s, err)
	}
	return h<<32 | l, nil
}

// Format formats a WAL position as PostgreSQL prints a pg_lsn: upper-case hexadecimal without
// leading zeros, e.g. "16/B374D848", "0/0".
func Format(lsn uint64) string {
	return fmt.Sprintf("%X/%X", lsn>>32, uint32(lsn))
}
