package heartbeat

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/regentdb/regent/pgtest"
)

func target(b *pgtest.Bench, s *pgtest.Server) Target {
	return Target{Cluster: "orders", Node: s.Name, Region: "us-east", Host: s.Host, Port: uint16(s.Port),
		User: pgtest.SuperUser, Database: "postgres", Password: b.Password()}
}

func readHeartbeat(t *testing.T, ctx context.Context, s *pgtest.Server, cluster string) *time.Time {
	t.Helper()
	var ts *time.Time
	if err := s.QueryRow(ctx, ReadQuery, cluster).Scan(&ts); err != nil {
		t.Fatalf("read heartbeat on %s: %v", s, err)
	}
	return ts
}

func TestBeatReplicatesToStandby(t *testing.T) {
	b := pgtest.Start(t, pgtest.Options{Standbys: 1})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	primary, standby := b.Servers()[0], b.Servers()[1]
	if ts := readHeartbeat(t, ctx, standby, "orders"); ts != nil {
		t.Fatalf("heartbeat before any beat: %v", ts)
	}
	w := NewWriter(5 * time.Second)
	defer w.Close()
	first, err := w.Beat(ctx, target(b, primary))
	if err != nil {
		t.Fatal(err)
	}
	second, err := w.Beat(ctx, target(b, primary))
	if err != nil {
		t.Fatal(err)
	}
	if !second.After(first) {
		t.Errorf("second heartbeat %v not after first %v", second, first)
	}
	if got := readHeartbeat(t, ctx, primary, "orders"); got == nil || !got.Equal(second) {
		t.Errorf("primary heartbeat %v, want %v", got, second)
	}
	if err := pgtest.WaitFor(ctx, func(ctx context.Context) (bool, error) {
		var ts *time.Time
		err := standby.QueryRow(ctx, ReadQuery, "orders").Scan(&ts)
		return ts != nil && ts.Equal(second), err
	}); err != nil {
		t.Fatalf("standby never replayed the heartbeat: %v", err)
	}
	if ts := readHeartbeat(t, ctx, standby, "other"); ts != nil {
		t.Errorf("heartbeat of another cluster visible: %v", ts)
	}
}

func TestBeatOnStandbyFailsClearlyWithoutPassword(t *testing.T) {
	b := pgtest.Start(t, pgtest.Options{Standbys: 1})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	standby := b.Servers()[1]
	w := NewWriter(5 * time.Second)
	defer w.Close()
	_, err := w.Beat(ctx, target(b, standby))
	if err == nil {
		t.Fatal("heartbeat on a standby succeeded")
	}
	if !strings.Contains(err.Error(), standby.Name) {
		t.Errorf("error %q does not name the node", err)
	}
	if strings.Contains(err.Error(), b.Password()) {
		t.Errorf("error leaks the password: %q", err)
	}
}

func TestTwoWritersCreateSchemaConcurrently(t *testing.T) {
	b := pgtest.Start(t, pgtest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	primary := b.Servers()[0]
	errs := make(chan error, 2)
	for range 2 {
		go func() {
			w := NewWriter(5 * time.Second)
			defer w.Close()
			_, err := w.Beat(ctx, target(b, primary))
			if err != nil { // a schema race loses once, then succeeds
				_, err = w.Beat(ctx, target(b, primary))
			}
			errs <- err
		}()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
