package agent_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/regentdb/regent/internal/benchkeeper"
	"github.com/regentdb/regent/internal/witnesstest"
	"github.com/regentdb/regent/keeper"
	"github.com/regentdb/regent/pgtest"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// keeperRigPolicy is the policy of the keeper failover tests: probes every 250 ms, down after
// 750 ms — shorter than the primary keeper's restart of a crashed postmaster (it looks every
// lease_ttl/4 = 500 ms, then crash recovery), so the leader does get to decide while the
// restart is under way — and the default lease_ttl (2 s).
func keeperRigPolicy() *regentv1.Policy {
	return &regentv1.Policy{ProbeIntervalMs: 250, ProbeTimeoutMs: 250, DownAfterMs: 750, LeaseTtlMs: 2000,
		FailoverLagThresholdMs: 5000}
}

// startKeeperRig is a real PostgreSQL primary with two streaming standbys, three witnesses
// and a keeper beside the primary (keeper_addr in the spec), with the cluster applied, NOT
// paused, and observed healthy with the keeper holding its lease. slowStart > 0 gives the
// keeper a pg_ctl whose start takes that much longer (a long crash recovery).
func startKeeperRig(t *testing.T, slowStart time.Duration) (*failoverRig, *keeper.Keeper) {
	t.Helper()
	b := pgtest.Start(t, pgtest.Options{Standbys: 2})
	binDir := b.BinDir()
	if slowStart > 0 {
		var err error
		if binDir, err = b.SlowStartBinDir(slowStart); err != nil {
			t.Fatal(err)
		}
	}
	// Servers the keeper started with pg_ctl are not pgtest's children; the bench's Close
	// stops them too (the keeper, registered later, is shut down before it runs).
	r := &failoverRig{observeRig: &observeRig{bench: b, primary: b.Servers()[0], eu: b.Servers()[1], ap: b.Servers()[2]}}
	r.c = witnesstest.Start(t, 3, witnesstest.Options{})
	r.leader = r.c.WaitLeader(wait)
	r.c.WaitReady(wait)
	var ws []string
	for _, wc := range r.c.Configs {
		ws = append(ws, wc.GRPCAddr)
	}
	cfg, err := benchkeeper.Config(b, r.primary, benchkeeper.Options{Cluster: "orders", Node: "pg-us", Witnesses: ws,
		StateDir: filepath.Join(t.TempDir(), "keeper-pg-us"), LeaseTTL: 2 * time.Second,
		FenceMargin: 800 * time.Millisecond, // the SQL fence fits under -race
		LogLevel:    "debug"})
	if err != nil {
		t.Fatal(err)
	}
	cfg.BinDir = binDir
	sp := &regentv1.ClusterSpec{
		Name: "orders", Primary: "pg-us", Policy: keeperRigPolicy(),
		Nodes: []*regentv1.NodeSpec{
			{Name: "pg-us", Region: "us-east", Host: r.primary.Host, Port: uint32(r.primary.Port), KeeperAddr: cfg.ListenGRPC},
			{Name: "pg-eu", Region: "eu-west", Host: r.eu.Host, Port: uint32(r.eu.Port), Priority: 1},
			{Name: "pg-ap", Region: "ap-south", Host: r.ap.Host, Port: uint32(r.ap.Port)},
		},
	}
	applyRetrying(t, witnesstest.Context(t, wait), r.c, r.leader, sp)
	k, err := keeper.Start(cfg, keeperTestLogger(t))
	if err != nil {
		t.Fatalf("start the keeper of pg-us: %v", err)
	}
	t.Cleanup(func() {
		if err := k.Shutdown(); err != nil {
			t.Logf("keeper shutdown: %v", err)
		}
	})
	r.waitObserved(t)
	witnesstest.Eventually(t, wait, "pg-us's keeper holding the lease", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return k.Status(ctx, false).HoldsLease
	})
	return r, k
}

// keeperTestLogger sends a keeper's log to the test log with -v or REGENT_TEST_LOG set, while
// the test runs.
func keeperTestLogger(t *testing.T) *slog.Logger {
	var out io.Writer = io.Discard
	if testing.Verbose() || os.Getenv("REGENT_TEST_LOG") != "" {
		w := &testLogWriter{t: t}
		t.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
		out = w
	}
	return slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testLogWriter struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
}

func (w *testLogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

// postmasterPIDOf is the pid of the postmaster running on s's data directory.
func postmasterPIDOf(t *testing.T, s *pgtest.Server) int {
	t.Helper()
	pid := s.PostmasterPID()
	if pid == 0 {
		t.Fatalf("no postmaster runs on %s", s)
	}
	return pid
}

// A primary postmaster crash with its keeper alive: the keeper restarts it in place as the
// primary, the leader holds the failover off meanwhile (and while the witnesses' votes catch
// up), and writes resume on the same node. The cluster is not paused. The restart is made to
// take 2 s longer than it would, so that the leader does decide while it is under way.
func TestPrimaryCrashWithKeeperRestartsInPlace(t *testing.T) {
	r, _ := startKeeperRig(t, 2*time.Second)
	ctx := witnesstest.Context(t, 3*wait)
	if err := r.primary.Exec(ctx, "CREATE TABLE crash_writes (id int)"); err != nil {
		t.Fatal(err)
	}
	pid := postmasterPIDOf(t, r.primary)
	if err := r.primary.Kill9(); err != nil {
		t.Fatal(err)
	}
	crashed := time.Now()
	var refusals []string
	seen := map[string]bool{}
	note := func() {
		if ref := r.cluster().GetRefusal(); ref != "" && !seen[ref] {
			seen[ref] = true
			refusals = append(refusals, ref)
		}
	}
	witnesstest.Eventually(t, wait, "a write on pg-us after the crash", func() bool {
		note()
		return r.primary.Exec(ctx, "INSERT INTO crash_writes VALUES (1)") == nil
	})
	if got := postmasterPIDOf(t, r.primary); got == pid {
		t.Fatalf("the same postmaster %d answers: it was not restarted", pid)
	}
	t.Logf("writes resumed on pg-us %v after the kill", time.Since(crashed).Round(time.Millisecond))
	// Stay until the witnesses see pg-us again and the keeper no longer reports the restart,
	// and a little beyond (the leader's next decisions): no failover at any point.
	witnesstest.Eventually(t, wait, "pg-us observed reachable again, the restart settled", func() bool {
		note()
		up, _ := votes(r.node("pg-us"))
		return up == 3 && r.cluster().GetRefusal() == "" && time.Since(crashed) > 8*time.Second
	})
	if evs := r.events(); len(evs) != 0 {
		t.Fatalf("a failover was started over a primary its keeper restarted in place: %v (refusals seen: %q)", evs, refusals)
	}
	if c := r.cluster(); c.GetPrimary() != "pg-us" || c.GetLeaseEpoch() != 1 {
		t.Errorf("primary %s at epoch %d, want pg-us at 1", c.GetPrimary(), c.GetLeaseEpoch())
	}
	if inRecovery(t, r.primary) || !inRecovery(t, r.eu) || !inRecovery(t, r.ap) {
		t.Error("roles changed: only pg-us should be a primary")
	}
	t.Logf("refusals recorded meanwhile: %q", refusals)
	if len(refusals) == 0 {
		t.Error("no refusal recorded: the restart outlasted down_after, so the leader should have held off and said why")
	}
	for _, ref := range refusals {
		if !strings.Contains(ref, "restarting the primary in place") {
			t.Errorf("refusal %q: the only reason to hold off here is the keeper's restart", ref)
		}
	}
}

// The keeper is alive but PostgreSQL cannot start again (its configuration is broken): the
// keeper stops reporting a restart after two failed starts, the leader fails over, and the
// keeper's confirmed STOP is the fence — no lease to wait out.
func TestKeeperConfirmedStopFencesWithoutLeaseWait(t *testing.T) {
	r, k := startKeeperRig(t, 0)
	ctx := witnesstest.Context(t, 3*wait)
	conf := filepath.Join(r.primary.DataDir, "postgresql.conf")
	f, err := os.OpenFile(conf, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("\nthis line is not a setting\n"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := r.primary.Kill9(); err != nil {
		t.Fatal(err)
	}
	witnesstest.Eventually(t, wait, "a failover event", func() bool { return len(r.events()) > 0 })
	ev := r.waitEvent(t, r.events()[0].GetId())
	if ev.GetStep() != regentv1.FailoverStep_FAILOVER_STEP_COMPLETED {
		t.Fatalf("failover ended %v: %s (notes %v)", ev.GetStep(), ev.GetAbortReason(), ev.GetNotes())
	}
	if ev.GetFenceMethod() != "keeper" {
		t.Fatalf("fence method %q, want keeper (notes %v)", ev.GetFenceMethod(), ev.GetNotes())
	}
	var fenced time.Time
	for _, st := range ev.GetSteps() {
		if st.GetStep() == regentv1.FailoverStep_FAILOVER_STEP_FENCED {
			fenced = st.GetAt().AsTime()
		}
	}
	// No lease wait: fenced well within lease_ttl of the decision.
	if d := fenced.Sub(ev.GetStartedAt().AsTime()); d >= 2*time.Second {
		t.Errorf("fenced %v after the decision: the keeper's STOP should have spared the lease wait", d)
	}
	if st := k.Status(ctx, true); !st.Stopped || st.PostmasterRunning {
		t.Errorf("keeper status after the fence: stopped %v, postmaster running %v", st.Stopped, st.PostmasterRunning)
	}
	if !inRecovery(t, r.eu) == !inRecovery(t, r.ap) {
		t.Error("want exactly one standby promoted")
	}
}
