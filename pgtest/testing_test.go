package pgtest_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/regentdb/regent/pgtest"
)

// recordingTB records the first Skip or Fatal instead of ending the test.
type recordingTB struct {
	testing.TB
	skipped, failed bool
	msg             string
}

func (r *recordingTB) Helper() {}

func (r *recordingTB) Skipf(format string, args ...any) {
	if !r.skipped && !r.failed {
		r.skipped, r.msg = true, fmt.Sprintf(format, args...)
	}
}

func (r *recordingTB) Fatalf(format string, args ...any) {
	if !r.skipped && !r.failed {
		r.failed, r.msg = true, fmt.Sprintf(format, args...)
	}
}

func TestRequirePostgres(t *testing.T) {
	t.Setenv("PGTEST_BINDIR", t.TempDir()) // a directory without PostgreSQL

	t.Setenv("CI", "")
	r := &recordingTB{TB: t}
	pgtest.RequirePostgres(r)
	if !r.skipped || !strings.Contains(r.msg, "postgres") || !strings.Contains(r.msg, "initdb") {
		t.Errorf("locally: skipped %v failed %v %q; want a skip naming the missing programs", r.skipped, r.failed, r.msg)
	}

	t.Setenv("CI", "true")
	r = &recordingTB{TB: t}
	pgtest.RequirePostgres(r)
	if !r.failed {
		t.Errorf("under CI=true: skipped %v failed %v %q; want a failure", r.skipped, r.failed, r.msg)
	}
}
