package probe_test

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/regentdb/regent/heartbeat"
	"github.com/regentdb/regent/internal/pglsn"
	"github.com/regentdb/regent/pgtest"
	"github.com/regentdb/regent/probe"
)

func ctxT(t testing.TB, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// target returns the probe target of a bench server, logging in as the
// bench superuser.
func target(b *pgtest.Bench, s *pgtest.Server) probe.Target {
	return probe.Target{
		Cluster:  "bench",
		Node:     s.Name,
		Host:     s.Host,
		Port:     uint16(s.Port),
		User:     pgtest.SuperUser,
		Database: "postgres",
		Password: b.Password(),
		SSLMode:  "disable",
	}
}

// closedPort returns a loopback port nothing listens on.
func closedPort(t *testing.T) uint16 {
	t.Helper()
	bh, err := pgtest.NewBlackHole()
	if err != nil {
		t.Fatal(err)
	}
	port := bh.Port()
	bh.Close()
	return uint16(port)
}

func mustReach(t *testing.T, r probe.Result) {
	t.Helper()
	if !r.Reachable || r.ErrorClass != probe.ClassNone || r.Err != nil {
		t.Fatalf("%s: want reachable, got class %q err %v", r.Target, r.ErrorClass, r.Err)
	}
}

func TestLive(t *testing.T) {
	b := pgtest.Start(t, pgtest.Options{Standbys: 2})
	ctx := ctxT(t, 3*time.Minute)
	p, s1, s2 := b.Primary, b.Standbys[0], b.Standbys[1]
	sysid, err := p.SystemIdentifier(ctx)
	if err != nil {
		t.Fatal(err)
	}
	prober := probe.NewProber(probe.Options{Timeout: 5 * time.Second})
	t.Cleanup(func() { prober.Close() })

	t.Run("roles and LSNs", func(t *testing.T) {
		if err := p.Exec(ctx, "CREATE TABLE t1 AS SELECT generate_series(1, 1000) AS i"); err != nil {
			t.Fatal(err)
		}
		before, err := p.LSNs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		pr := prober.Probe(ctx, target(b, p))
		after, err := p.LSNs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		mustReach(t, pr)
		if pr.InRecovery || pr.Role() != "primary" {
			t.Errorf("primary probed as in recovery")
		}
		if pr.CurrentLSN < before.Current || pr.CurrentLSN > after.Current {
			t.Errorf("primary CurrentLSN %s not within [%s, %s]", pglsn.Format(pr.CurrentLSN),
				pglsn.Format(before.Current), pglsn.Format(after.Current))
		}
		if pr.ReceivedLSN != 0 || pr.ReplayLSN != 0 || pr.WalReceiverStatus != "" || pr.ReplayPaused {
			t.Errorf("primary has standby fields: %+v", pr)
		}
		if pr.Timeline != 1 || pr.SystemIdentifier != sysid {
			t.Errorf("primary timeline %d system id %d; want 1, %d", pr.Timeline, pr.SystemIdentifier, sysid)
		}
		if pr.Target.Password != "" {
			t.Errorf("result carries the password")
		}
		if pr.At.IsZero() || pr.Latency <= 0 {
			t.Errorf("At %v Latency %v", pr.At, pr.Latency)
		}

		for _, s := range []*pgtest.Server{s1, s2} {
			if err := s.WaitReplayed(ctx, after.Current); err != nil {
				t.Fatal(err)
			}
			r := prober.Probe(ctx, target(b, s))
			mustReach(t, r)
			if !r.InRecovery || r.Role() != "replica" || r.CurrentLSN != 0 {
				t.Errorf("%s: InRecovery %v CurrentLSN %X", s.Name, r.InRecovery, r.CurrentLSN)
			}
			if r.ReplayLSN < after.Current || r.ReceivedLSN < r.ReplayLSN {
				t.Errorf("%s: received %s replayed %s; want replayed >= %s and received >= replayed", s.Name,
					pglsn.Format(r.ReceivedLSN), pglsn.Format(r.ReplayLSN), pglsn.Format(after.Current))
			}
			if r.WalReceiverStatus != "streaming" || r.SenderHost != p.Host || int(r.SenderPort) != p.Port {
				t.Errorf("%s: receiver %q from %s:%d; want streaming from %s:%d", s.Name,
					r.WalReceiverStatus, r.SenderHost, r.SenderPort, p.Host, p.Port)
			}
			if r.Timeline != 1 || r.SystemIdentifier != sysid || r.ReplayPaused {
				t.Errorf("%s: timeline %d system id %d paused %v", s.Name, r.Timeline, r.SystemIdentifier, r.ReplayPaused)
			}
			if r.LastReplayTimestamp.IsZero() {
				t.Errorf("%s: no last replay timestamp after replaying a transaction", s.Name)
			}
		}
	})

	t.Run("expected system identifier matches", func(t *testing.T) {
		tg := target(b, s1)
		tg.ExpectedSystemID = sysid
		mustReach(t, prober.Probe(ctx, tg))
		// sslmode "" is libpq's "prefer": TLS is tried, refused by the
		// bench, and the probe goes on in plain text.
		tg.Node, tg.SSLMode = "prefer", ""
		mustReach(t, prober.Probe(ctx, tg))
	})

	t.Run("killed standby is refused, then back", func(t *testing.T) {
		tg := target(b, s2)
		mustReach(t, prober.Probe(ctx, tg)) // a kept connection exists
		if err := s2.Kill9(); err != nil {
			t.Fatal(err)
		}
		r := prober.Probe(ctx, tg)
		if r.Reachable || r.ErrorClass != probe.ClassRefused {
			t.Fatalf("killed standby: reachable %v class %q err %v; want refused", r.Reachable, r.ErrorClass, r.Err)
		}
		if err := s2.Start(ctx); err != nil {
			t.Fatal(err)
		}
		r = prober.Probe(ctx, tg)
		mustReach(t, r)
		if !r.InRecovery {
			t.Errorf("restarted standby not in recovery")
		}
	})

	t.Run("restarted primary is reachable at the first probe", func(t *testing.T) {
		tg := target(b, p)
		mustReach(t, prober.Probe(ctx, tg))
		if err := p.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		if err := p.Start(ctx); err != nil {
			t.Fatal(err)
		}
		// The kept connection is dead; the probe must replace it rather
		// than report the node down.
		mustReach(t, prober.Probe(ctx, tg))
		for _, s := range []*pgtest.Server{s1, s2} {
			if err := s.WaitStreaming(ctx); err != nil {
				t.Fatal(err)
			}
		}
	})

	t.Run("paused replay", func(t *testing.T) {
		load, err := p.WriteLoad(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer load.Stop()
		if err := s1.PauseReplay(ctx); err != nil {
			t.Fatal(err)
		}
		if err := s1.WaitReplayPaused(ctx); err != nil {
			t.Fatal(err)
		}
		tg := target(b, s1)
		first := prober.Probe(ctx, tg)
		mustReach(t, first)
		if !first.ReplayPaused {
			t.Fatalf("paused standby probed with ReplayPaused false")
		}
		firstPrimary := prober.Probe(ctx, target(b, p))
		mustReach(t, firstPrimary)

		n := load.Stats().Acked
		if err := load.WaitAcked(ctx, n+100); err != nil {
			t.Fatal(err)
		}
		var second, secondPrimary probe.Result
		if err := pgtest.WaitFor(ctx, func(ctx context.Context) (bool, error) {
			secondPrimary = prober.Probe(ctx, target(b, p))
			second = prober.Probe(ctx, tg)
			return second.Reachable && second.ReceivedLSN > first.ReceivedLSN, second.Err
		}); err != nil {
			t.Fatalf("WAL does not arrive on the paused standby: %v", err)
		}
		mustReach(t, secondPrimary)
		if !second.ReplayPaused || second.ReplayLSN != first.ReplayLSN {
			t.Errorf("replay moved while paused: %s -> %s (paused %v)",
				pglsn.Format(first.ReplayLSN), pglsn.Format(second.ReplayLSN), second.ReplayPaused)
		}
		lag1 := firstPrimary.CurrentLSN - first.ReplayLSN
		lag2 := secondPrimary.CurrentLSN - second.ReplayLSN
		if lag2 <= lag1 {
			t.Errorf("lag did not grow under load while paused: %d then %d bytes", lag1, lag2)
		}

		if err := s1.ResumeReplay(ctx); err != nil {
			t.Fatal(err)
		}
		st := load.Stop()
		if st.Acked == 0 {
			t.Fatalf("load acked nothing: %+v", st)
		}
		final := prober.Probe(ctx, target(b, p))
		mustReach(t, final)
		if err := pgtest.WaitFor(ctx, func(ctx context.Context) (bool, error) {
			r := prober.Probe(ctx, tg)
			return r.Reachable && !r.ReplayPaused && r.ReplayLSN >= final.CurrentLSN, r.Err
		}); err != nil {
			t.Fatalf("standby does not catch up after resuming: %v", err)
		}
	})

	t.Run("a timed-out probe keeps its connection", func(t *testing.T) {
		// The probe reads regent.heartbeat; a lock on it makes the probe
		// query hang on a live server, as an overloaded server would.
		if err := p.Exec(ctx, heartbeat.Schema); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := p.Exec(ctx, "DROP SCHEMA regent CASCADE"); err != nil {
				t.Error(err)
			}
		}()
		const app = "regent-probe-keep"
		pr := probe.NewProber(probe.Options{Timeout: 300 * time.Millisecond, ApplicationName: app})
		defer pr.Close()
		tg := target(b, p)
		mustReach(t, pr.Probe(ctx, tg))
		pids := func() []int32 {
			t.Helper()
			rows, err := p.Query(ctx, "SELECT pid FROM pg_stat_activity WHERE application_name = $1 ORDER BY pid", app)
			if err != nil {
				t.Fatal(err)
			}
			var out []int32
			for _, r := range rows {
				out = append(out, r[0].(int32))
			}
			return out
		}
		before := pids()
		if len(before) != 1 {
			t.Fatalf("probe backends before the lock: %v, want one", before)
		}
		conn, err := p.Connect(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "LOCK TABLE regent.heartbeat IN ACCESS EXCLUSIVE MODE"); err != nil {
			t.Fatal(err)
		}
		for i := range 3 {
			r := pr.Probe(ctx, tg)
			if r.Reachable || r.ErrorClass != probe.ClassTimeout {
				t.Fatalf("probe %d under the lock: reachable %v class %q err %v; want a timeout", i, r.Reachable, r.ErrorClass, r.Err)
			}
		}
		if err := tx.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
		if err := pgtest.WaitFor(ctx, func(ctx context.Context) (bool, error) {
			return pr.Probe(ctx, tg).Reachable, nil
		}); err != nil {
			t.Fatalf("no answer after the lock was released: %v", err)
		}
		if after := pids(); len(after) != 1 || after[0] != before[0] {
			t.Errorf("probe backends after three timeouts: %v, want the same one as before (%v): timeouts must not reconnect", after, before)
		}
	})

	t.Run("black hole times out without delaying a real target", func(t *testing.T) {
		bh := pgtest.StartBlackHole(t)
		const timeout = 2 * time.Second
		pr := probe.NewProber(probe.Options{Timeout: timeout})
		defer pr.Close()
		hole := probe.Target{Cluster: "bench", Node: "hole", Host: bh.Host(), Port: uint16(bh.Port()), User: "regent", SSLMode: "disable"}
		real := target(b, p)

		// ProbeAll: both results come back, each for what it is.
		rs := pr.ProbeAll(ctx, []probe.Target{hole, real})
		if rs[0].Reachable || rs[0].ErrorClass != probe.ClassTimeout {
			t.Errorf("black hole: reachable %v class %q err %v; want timeout", rs[0].Reachable, rs[0].ErrorClass, rs[0].Err)
		}
		if rs[0].Latency < timeout {
			t.Errorf("black hole gave up after %v, before the %v timeout", rs[0].Latency, timeout)
		}
		mustReach(t, rs[1])

		// A loop delivers the real target's results while the black
		// hole's first probe is still waiting.
		results := make(chan probe.Result, 1000)
		loop := probe.NewLoop(pr, 50*time.Millisecond, func(r probe.Result) { results <- r })
		if err := loop.SetTargets([]probe.Target{hole, real}); err != nil {
			t.Fatal(err)
		}
		lctx, cancel := context.WithCancel(ctx)
		done := make(chan error)
		go func() { done <- loop.Run(lctx) }()
		realBefore := 0
	collect:
		for {
			select {
			case r := <-results:
				if r.Target.Node == "hole" {
					if r.ErrorClass != probe.ClassTimeout {
						t.Errorf("black hole in loop: class %q err %v", r.ErrorClass, r.Err)
					}
					break collect
				}
				mustReach(t, r)
				realBefore++
			case <-ctx.Done():
				t.Fatal("no result from the black hole")
			}
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if realBefore == 0 {
			t.Errorf("the real target's results waited for the black hole's timeout")
		}
		if bh.Accepted() == 0 {
			t.Errorf("the black hole saw no connection")
		}
	})

	t.Run("another cluster is the wrong system", func(t *testing.T) {
		other, err := b.NewPrimary(ctx, "other")
		if err != nil {
			t.Fatal(err)
		}
		otherID, err := other.SystemIdentifier(ctx)
		if err != nil {
			t.Fatal(err)
		}
		tg := target(b, other)
		tg.Node = "primary-moved" // the address now points at the other cluster
		tg.ExpectedSystemID = sysid
		for i := 0; i < 2; i++ { // the second time over no kept connection
			r := prober.Probe(ctx, tg)
			if r.Reachable || r.ErrorClass != probe.ClassWrongSystem || !errors.Is(r.Err, probe.ErrWrongSystem) {
				t.Fatalf("probe %d: reachable %v class %q err %v; want wrong_system", i, r.Reachable, r.ErrorClass, r.Err)
			}
			if r.SystemIdentifier != otherID || r.CurrentLSN != 0 {
				t.Errorf("wrong_system result: system id %d (want %d), CurrentLSN %X (want 0)", r.SystemIdentifier, otherID, r.CurrentLSN)
			}
		}
		if err := other.Stop(ctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("error classes", func(t *testing.T) {
		base := target(b, p)
		tests := []struct {
			name   string
			mutate func(*probe.Target)
			want   probe.ErrorClass
		}{
			{"unknown role", func(tg *probe.Target) { tg.User = "nobody" }, probe.ClassAuth},
			{"no such database", func(tg *probe.Target) { tg.Database = "nodb" }, probe.ClassServerError},
			{"TLS required, server has none", func(tg *probe.Target) { tg.SSLMode = "require" }, probe.ClassTLS},
			{"closed port", func(tg *probe.Target) { tg.Port = closedPort(t) }, probe.ClassRefused},
			{"invalid target", func(tg *probe.Target) { tg.Host = "" }, probe.ClassOther},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				tg := base
				tg.Node = "err-" + tt.name
				tt.mutate(&tg)
				r := prober.Probe(ctx, tg)
				if r.Reachable || r.ErrorClass != tt.want {
					t.Errorf("reachable %v class %q err %v; want %q", r.Reachable, r.ErrorClass, r.Err, tt.want)
				}
			})
		}
	})

	t.Run("least privilege: pg_monitor", func(t *testing.T) {
		if err := p.Exec(ctx, "CREATE ROLE witness LOGIN IN ROLE pg_monitor"); err != nil {
			t.Fatal(err)
		}
		if err := s1.WaitCaughtUp(ctx, p); err != nil {
			t.Fatal(err)
		}
		for _, s := range []*pgtest.Server{p, s1} {
			tg := target(b, s)
			tg.Node += "-witness"
			tg.User, tg.Password = "witness", ""
			r := prober.Probe(ctx, tg)
			mustReach(t, r)
			if r.SystemIdentifier != sysid || r.Timeline == 0 {
				t.Errorf("%s as witness: system id %d timeline %d", s.Name, r.SystemIdentifier, r.Timeline)
			}
			if s == s1 && (r.SenderHost == "" || r.SenderPort == 0) {
				t.Errorf("witness cannot see the WAL receiver's upstream: %q:%d", r.SenderHost, r.SenderPort)
			}
		}
	})

	t.Run("password auth", func(t *testing.T) {
		// The bench trusts loopback; a password-checking bench shares
		// nothing with this one.
		pb := pgtest.Start(t, pgtest.Options{PasswordAuth: true})
		tg := target(pb, pb.Primary)
		mustReach(t, prober.Probe(ctx, tg))
		tg.Node = "wrong-password"
		tg.Password = "wrong"
		if r := prober.Probe(ctx, tg); r.ErrorClass != probe.ClassAuth {
			t.Errorf("wrong password: class %q err %v; want auth", r.ErrorClass, r.Err)
		}
	})

	t.Run("loop follows SetTargets", func(t *testing.T) {
		base := runtime.NumGoroutine()
		const app = "regent-probe-loop-test"
		pr := probe.NewProber(probe.Options{Timeout: 5 * time.Second, ApplicationName: app})
		defer pr.Close()
		var mu sync.Mutex
		seen := map[string]probe.Result{}
		count := map[string]int{}
		loop := probe.NewLoop(pr, 20*time.Millisecond, func(r probe.Result) {
			mu.Lock()
			seen[r.Target.Node] = r
			count[r.Target.Node]++
			mu.Unlock()
		})
		get := func(node string) (probe.Result, int) {
			mu.Lock()
			defer mu.Unlock()
			return seen[node], count[node]
		}
		waitResults := func(node string, n int) probe.Result {
			t.Helper()
			_, have := get(node)
			if err := pgtest.WaitFor(ctx, func(context.Context) (bool, error) {
				_, c := get(node)
				return c >= have+n, nil
			}); err != nil {
				t.Fatalf("no results for %s: %v", node, err)
			}
			r, _ := get(node)
			return r
		}
		probeConns := func(s *pgtest.Server) int {
			var n int
			if err := s.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", app).Scan(&n); err != nil {
				t.Fatal(err)
			}
			return n
		}

		if err := loop.SetTargets([]probe.Target{target(b, p)}); err != nil {
			t.Fatal(err)
		}
		lctx, cancel := context.WithCancel(ctx)
		done := make(chan error)
		go func() { done <- loop.Run(lctx) }()
		mustReach(t, waitResults("primary", 3))
		if n := probeConns(p); n != 1 {
			t.Errorf("%d probe connections on the primary after several probes; want 1 kept connection", n)
		}

		// Invalid sets are refused whole.
		dup := []probe.Target{target(b, s1), target(b, s1)}
		if err := loop.SetTargets(dup); err == nil {
			t.Fatal("duplicate targets accepted")
		}
		if got := loop.Targets(); len(got) != 1 || got[0].Node != "primary" {
			t.Fatalf("targets after a refused SetTargets: %v", got)
		}

		// Replace the primary by the two standbys.
		if err := loop.SetTargets([]probe.Target{target(b, s1), target(b, s2)}); err != nil {
			t.Fatal(err)
		}
		for _, s := range []*pgtest.Server{s1, s2} {
			r := waitResults(s.Name, 2)
			mustReach(t, r)
			if !r.InRecovery {
				t.Errorf("%s probed as primary", s.Name)
			}
		}
		if err := pgtest.WaitFor(ctx, func(context.Context) (bool, error) { return probeConns(p) == 0, nil }); err != nil {
			t.Errorf("the removed target's connection stays open: %v", err)
		}

		// Same key, new address: the next probes use it.
		moved := target(b, s1)
		moved.Host, moved.Port = p.Host, uint16(p.Port)
		if err := loop.SetTargets([]probe.Target{moved, target(b, s2)}); err != nil {
			t.Fatal(err)
		}
		if err := pgtest.WaitFor(ctx, func(context.Context) (bool, error) {
			r, _ := get(s1.Name)
			return r.Reachable && !r.InRecovery, nil
		}); err != nil {
			t.Errorf("a changed target keeps being probed at its old address: %v", err)
		}

		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		pr.Close()
		if err := pgtest.WaitFor(ctx, func(context.Context) (bool, error) {
			return runtime.NumGoroutine() <= base, nil
		}); err != nil {
			t.Errorf("goroutines leaked: %d now, %d before", runtime.NumGoroutine(), base)
		}
		if err := pgtest.WaitFor(ctx, func(context.Context) (bool, error) {
			return probeConns(p)+probeConns(s2) == 0, nil
		}); err != nil {
			t.Errorf("connections left open after the loop stopped and the prober closed: %v", err)
		}
		if r := pr.Probe(ctx, target(b, p)); !errors.Is(r.Err, probe.ErrClosed) {
			t.Errorf("probe after Close: %v; want ErrClosed", r.Err)
		}
	})
}

func BenchmarkProbe(b *testing.B) {
	bench := pgtest.Start(b, pgtest.Options{})
	ctx := ctxT(b, 10*time.Minute)
	pr := probe.NewProber(probe.Options{Timeout: 5 * time.Second})
	defer pr.Close()
	tg := target(bench, bench.Primary)
	if r := pr.Probe(ctx, tg); !r.Reachable {
		b.Fatalf("primary unreachable: %v", r.Err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if r := pr.Probe(ctx, tg); !r.Reachable {
			b.Fatalf("probe failed: %v", r.Err)
		}
	}
}
