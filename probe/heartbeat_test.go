package probe

import (
	"context"
	"testing"
	"time"

	"github.com/regentdb/regent/heartbeat"
	"github.com/regentdb/regent/pgtest"
)

// The probe reads the heartbeat of its own cluster, on the primary and on a standby, and zero
// when the table does not exist yet.
func TestProbeReadsReplicatedHeartbeat(t *testing.T) {
	b := pgtest.Start(t, pgtest.Options{Standbys: 1})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := NewProber(Options{Timeout: 5 * time.Second})
	defer p.Close()
	tgt := func(s *pgtest.Server) Target {
		return Target{Cluster: "orders", Node: s.Name, Host: s.Host, Port: uint16(s.Port), User: pgtest.SuperUser, Database: "postgres", Password: b.Password(), SSLMode: "disable"}
	}
	primary, standby := b.Servers()[0], b.Servers()[1]
	if r := p.Probe(ctx, tgt(standby)); !r.Reachable || !r.HeartbeatAt.IsZero() {
		t.Fatalf("before any heartbeat: %v (heartbeat %v)", r, r.HeartbeatAt)
	}
	w := heartbeat.NewWriter(5 * time.Second)
	defer w.Close()
	ts, err := w.Beat(ctx, heartbeat.Target{Cluster: "orders", Node: primary.Name, Region: "us-east", Host: primary.Host,
		Port: uint16(primary.Port), User: pgtest.SuperUser, Database: "postgres", Password: b.Password()})
	if err != nil {
		t.Fatal(err)
	}
	if r := p.Probe(ctx, tgt(primary)); !r.HeartbeatAt.Equal(ts) {
		t.Errorf("primary heartbeat %v, want %v", r.HeartbeatAt, ts)
	}
	if err := pgtest.WaitFor(ctx, func(ctx context.Context) (bool, error) {
		return p.Probe(ctx, tgt(standby)).HeartbeatAt.Equal(ts), nil
	}); err != nil {
		t.Fatalf("standby heartbeat never reached %v: %v", ts, err)
	}
	other := tgt(standby)
	other.Cluster = "billing"
	if r := p.Probe(ctx, other); !r.Reachable || !r.HeartbeatAt.IsZero() {
		t.Errorf("another cluster's heartbeat: %v", r.HeartbeatAt)
	}
}
