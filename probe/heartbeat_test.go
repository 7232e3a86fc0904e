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

	// A probe user that may not read regent's schema still probes (without a heartbeat).
	if err := primary.Exec(ctx, "CREATE ROLE monitor LOGIN IN ROLE pg_monitor"); err != nil {
		t.Fatal(err)
	}
	if err := standby.WaitCaughtUp(ctx, primary); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*pgtest.Server{primary, standby} {
		mon := tgt(s)
		mon.Node, mon.User, mon.Password = s.Name+"-monitor", "monitor", ""
		for i := range 2 {
			if r := p.Probe(ctx, mon); !r.Reachable || !r.HeartbeatAt.IsZero() {
				t.Fatalf("%s as a user without rights on regent.heartbeat, probe %d: reachable %v (%v), heartbeat %v", s.Name, i, r.Reachable, r.Err, r.HeartbeatAt)
			}
		}
	}

	// The table dropped under a connection that reads it plainly (a prepared statement): the
	// probe still answers, without a heartbeat, and reads it again once it is back.
	if err := primary.Exec(ctx, "DROP SCHEMA regent CASCADE"); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if r := p.Probe(ctx, tgt(primary)); !r.Reachable || !r.HeartbeatAt.IsZero() {
			t.Fatalf("probe %d after the table was dropped: reachable %v (%v), heartbeat %v", i, r.Reachable, r.Err, r.HeartbeatAt)
		}
	}
	// The writer's kept connection believes the schema exists: its first beat may fail, and
	// it creates the schema again on the next.
	for i := range 2 {
		if ts, err = w.Beat(ctx, heartbeat.Target{Cluster: "orders", Node: primary.Name, Region: "us-east", Host: primary.Host,
			Port: uint16(primary.Port), User: pgtest.SuperUser, Database: "postgres", Password: b.Password()}); err == nil {
			break
		} else if i == 1 {
			t.Fatalf("heartbeat after the schema was dropped: %v", err)
		}
	}
	if r := p.Probe(ctx, tgt(primary)); !r.HeartbeatAt.Equal(ts) {
		t.Errorf("heartbeat after the table came back: %v (%v), want %v", r.HeartbeatAt, r.Err, ts)
	}
}
