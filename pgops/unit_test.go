package pgops

import (
	"context"
	"errors"
	"math"
	"net"
	"testing"
	"time"

	"github.com/regentdb/regent/internal/pglsn"
)

func TestDataLossBytes(t *testing.T) {
	for _, tc := range []struct {
		old, cand uint64
		want      int64
	}{
		{0, 0, 0},
		{100, 100, 0},
		{100, 150, 0}, // candidate ahead (it received more than the witnesses saw): no loss
		{150, 100, 50},
		{0x16B374D848, 0x16B3740000, 0xD848},
		{math.MaxUint64, 0, math.MaxInt64},
	} {
		if got := DataLossBytes(tc.old, tc.cand); got != tc.want {
			t.Errorf("DataLossBytes(%d, %d) = %d, want %d", tc.old, tc.cand, got, tc.want)
		}
	}
}

func TestParseLSN(t *testing.T) {
	for in, want := range map[string]uint64{"0/0": 0, "16/B374D848": 0x16B374D848, "FFFFFFFF/FFFFFFFF": math.MaxUint64} {
		if got, err := pglsn.Parse(in); err != nil || got != want {
			t.Errorf("pglsn.Parse(%q) = %X, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "16", "x/1", "1/100000000"} {
		if _, err := pglsn.Parse(in); err == nil {
			t.Errorf("pglsn.Parse(%q) succeeded", in)
		}
	}
}

func TestHostMatch(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		want, got string
		match     bool
	}{
		{"127.0.0.1", "127.0.0.1", true},
		{"DB1.example", "db1.example", true},
		{"localhost", "127.0.0.1", true},
		{"127.0.0.1", "localhost", true},
		{"::1", "127.0.0.1", true},
		{"127.0.0.1", "127.0.0.2", true}, // both loopback: the same machine
		{"127.0.0.1", "10.1.2.3", false},
		{"10.1.2.3", "10.1.2.4", false},
		{"10.1.2.3", "", false},
		{"127.0.0.1", "/var/run/postgresql", false},
		{"no-such-host.invalid", "10.1.2.3", false},
	} {
		if got := newHostMatcher(tc.want).matches(ctx, tc.got); got != tc.match {
			t.Errorf("want %q, sender %q: match %v, want %v", tc.want, tc.got, got, tc.match)
		}
	}
	if !ipsMatch([]net.IP{net.ParseIP("10.0.0.1"), net.ParseIP("10.0.0.2")}, []net.IP{net.ParseIP("10.0.0.2")}) {
		t.Error("shared address not matched")
	}
}

func TestScrub(t *testing.T) {
	base := errors.New("boom")
	if got := scrub(base, []string{"secret"}); got != base {
		t.Errorf("a clean error was replaced: %v", got)
	}
	leaky := errors.Join(base, errors.New("conninfo host=h password=secret"))
	got := scrub(leaky, []string{"", "secret"})
	if got.Error() != "boom\nconninfo host=h password=REDACTED" {
		t.Errorf("scrubbed = %q", got)
	}
	if errors.Unwrap(got) != nil || errors.Is(got, base) {
		t.Error("a scrubbed error still wraps the leaky one")
	}
	if scrub(nil, []string{"x"}) != nil {
		t.Error("nil not kept")
	}
}

func TestPromoteWait(t *testing.T) {
	if got := promoteWait(context.Background()); got != DefaultPromoteWait {
		t.Errorf("no deadline: %v", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if got := promoteWait(ctx); got < 27*time.Second || got > 29*time.Second || got%time.Second != 0 {
		t.Errorf("30s deadline: %v", got)
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel2()
	if got := promoteWait(ctx2); got != time.Second {
		t.Errorf("short deadline: %v", got)
	}
}
