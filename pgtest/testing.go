package pgtest

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"
)

// Start creates a Bench for a test with New and registers its Close with
// t.Cleanup, so that every server is stopped (and killed if need be) even
// when the test fails. When PostgreSQL is not installed it skips the test,
// or fails it when the environment says CI=true. When the test fails, the
// tail of each server's log is written to the test log.
func Start(t testing.TB, opts Options) *Bench {
	t.Helper()
	RequirePostgres(t)
	if opts.Logf == nil && testing.Verbose() {
		opts.Logf = t.Logf
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	b, err := New(ctx, opts)
	if err != nil {
		t.Fatalf("starting the PostgreSQL bench: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, s := range b.Servers() {
				t.Logf("--- end of %s's log (%s):\n%s", s, s.LogPath, s.LogTail(3000))
			}
		}
		if err := b.Close(); err != nil {
			t.Errorf("closing the PostgreSQL bench: %v", err)
		}
	})
	return b
}

// RequirePostgres skips the test when the PostgreSQL server programs are
// missing, naming what is missing, or fails it when CI=true.
func RequirePostgres(t testing.TB) {
	t.Helper()
	if _, err := FindBin(); err != nil {
		if errors.Is(err, ErrNoPostgres) && os.Getenv("CI") != "true" {
			t.Skipf("skipping: %v", err)
		}
		t.Fatalf("PostgreSQL is required (CI=true): %v", err)
	}
}

// StartBlackHole returns a BlackHole closed when the test ends.
func StartBlackHole(t testing.TB) *BlackHole {
	t.Helper()
	b, err := NewBlackHole()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}
