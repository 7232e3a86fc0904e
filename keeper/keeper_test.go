package keeper

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/regentdb/regent/internal/freeport"
	"github.com/regentdb/regent/internal/witnesstest"
	"github.com/regentdb/regent/pgtest"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// throughout runs check at once and then every interval until d has passed, failing the test
// at the first problem it reports: it watches a condition hold while time passes.
func throughout(t *testing.T, d, interval time.Duration, check func() string) {
	t.Helper()
	end := time.NewTimer(d)
	defer end.Stop()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		if problem := check(); problem != "" {
			t.Fatal(problem)
		}
		select {
		case <-end.C:
			return
		case <-tick.C:
		}
	}
}

// stayWritable watches, for d, that the keeper keeps the lease, never fences and that the
// primary takes writes.
func stayWritable(t *testing.T, r *rig, k *Keeper, d time.Duration, what string) {
	t.Helper()
	ctx := witnesstest.Context(t, d+wait)
	fencedBefore := k.Status(ctx, false).FencedAt
	writes := 0
	throughout(t, d, 50*time.Millisecond, func() string {
		if code, body := get(t, k, "/primary"); code != http.StatusOK {
			return fmt.Sprintf("%s: /primary answered %d %s", what, code, body)
		}
		if err := write(ctx, r.primary); err != nil {
			return fmt.Sprintf("%s: the primary refused a write: %v", what, err)
		}
		writes++
		st := k.Status(ctx, false)
		if !st.HoldsLease || st.Fenced || !st.FencedAt.Equal(fencedBefore) {
			return fmt.Sprintf("%s: lease %v fenced %v (%s) fenced at %v", what, st.HoldsLease, st.Fenced, st.FenceReason, st.FencedAt)
		}
		return ""
	})
	t.Logf("%s: %d writes over %v, lease held throughout", what, writes, d)
}

// (a) the lease is held and /primary is 200; (b) stopping the witness leader, and separately
// a follower, never fences the primary.
func TestPrimaryKeepsLeaseWhenAnyOneWitnessStops(t *testing.T) {
	// A longer lease than the other tests: this one asserts that nothing fences, and a CI
	// machine running many -race test binaries on two cores can delay a renewal round.
	r := startRigTTL(t, 4*time.Second)
	k := startKeeper(t, r.config(t, "pg-us"))
	waitLease(t, k)
	ctx := witnesstest.Context(t, 2*time.Minute)
	st := k.Status(ctx, false)
	if !st.Designated || !st.HoldsLease || st.LeaseEpoch != 1 || st.Fenced || st.Role() != "primary" {
		t.Fatalf("status after start: %+v", st)
	}
	if code, _ := get(t, k, "/read-only"); code != http.StatusOK {
		t.Errorf("/read-only on the primary: %d", code)
	}
	if code, _ := get(t, k, "/replica"); code != http.StatusServiceUnavailable {
		t.Errorf("/replica on the primary: %d", code)
	}
	periods := 3 * r.ttl

	leader := r.c.WaitLeader(wait)
	r.c.StopNode(leader)
	stayWritable(t, r, k, periods, "witness leader stopped")
	r.c.StartNode(leader)
	// One failure at a time: the restarted witness must be granting again before the next.
	r.waitGrants(t, leader)

	leader = r.c.WaitLeader(wait)
	follower := r.c.Follower(leader)
	r.c.StopNode(follower)
	stayWritable(t, r, k, periods, "a follower witness stopped")
	r.c.StartNode(follower)

	code, body := get(t, k, "/metrics")
	if code != http.StatusOK || !strings.Contains(body, "regent_keeper_lease_held 1") || !strings.Contains(body, `regent_keeper_renew_rounds_total{outcome="granted"}`) ||
		strings.Contains(body, `regent_keeper_fences_total{how="sql"}`) {
		t.Errorf("/metrics %d:\n%s", code, body)
	}
}

// (c) with two of three witnesses stopped the keeper fences before its lease deadline, and
// once they are back it holds the lease again and lifts the fence.
func TestKeeperFencesWithoutMajorityAndRecovers(t *testing.T) {
	r := startRig(t)
	k := startKeeper(t, r.config(t, "pg-us"))
	waitLease(t, k)
	ctx := witnesstest.Context(t, 2*time.Minute)

	leader := r.c.WaitLeader(wait)
	f := r.c.Follower(leader)
	r.c.StopNode(f)
	r.c.StopNode(leader)

	var at503 time.Time
	witnesstest.Eventually(t, wait, "/primary answering 503", func() bool {
		code, _ := get(t, k, "/primary")
		at503 = time.Now()
		return code == http.StatusServiceUnavailable
	})
	witnesstest.Eventually(t, wait, "the keeper fencing its server", func() bool {
		return k.Status(ctx, false).FenceReason == FenceLease
	})
	st := k.Status(ctx, false)
	// The lease as the witnesses count it ends ttl·(1−drift) after the last granted send, by
	// the keeper's clock; the keeper must have stopped answering 200 and fenced before then.
	leaseEnd := st.LastGrantedSend.Add(time.Duration(float64(testTTL) * (1 - 0.05)))
	if !at503.Before(leaseEnd) {
		t.Errorf("/primary turned 503 at %v, after the lease's end %v", at503.Sub(st.LastGrantedSend), leaseEnd.Sub(st.LastGrantedSend))
	}
	if st.FencedAt.IsZero() || st.FencedAt.After(leaseEnd) {
		t.Errorf("fenced at %v after the last grant, lease ended at %v", st.FencedAt.Sub(st.LastGrantedSend), leaseEnd.Sub(st.LastGrantedSend))
	}
	if !st.ReadOnly || !st.PostmasterRunning {
		t.Errorf("want a running read-only server (SQL fence): %+v", st)
	}
	if err := write(ctx, r.primary); !isReadOnlyErr(err) {
		t.Errorf("write on the fenced primary: %v, want SQLSTATE 25006", err)
	}

	r.c.StartNode(f)
	r.c.StartNode(leader)
	waitLease(t, k)
	witnesstest.Eventually(t, wait, "writes accepted again", func() bool { return write(ctx, r.primary) == nil })
	witnesstest.Eventually(t, wait, "the keeper's fence lifted", func() bool {
		st := k.Status(ctx, false)
		return !st.Fenced && st.FenceReason == FenceNone
	})
}

// (d) a revocation at a majority of witnesses fences the keeper within ttl, for good.
func TestRevokedLeaseFencesWithinTTL(t *testing.T) {
	r := startRig(t)
	k := startKeeper(t, r.config(t, "pg-us"))
	waitLease(t, k)
	ctx := witnesstest.Context(t, 2*time.Minute)

	for _, i := range []int{0, 1} {
		retry(t, ctx, "revoke", func() error {
			_, err := r.c.Client(i).RevokeLease(ctx, &regentv1.RevokeLeaseRequest{Cluster: "orders", Epoch: 1, Term: 1, EventId: 1})
			return err
		})
	}
	acked := time.Now()
	witnesstest.Eventually(t, wait, "the keeper fencing its server", func() bool {
		return !k.Status(ctx, false).FencedAt.IsZero()
	})
	st := k.Status(ctx, false)
	if d := st.FencedAt.Sub(acked); d > testTTL {
		t.Errorf("fenced %v after the revocation, more than ttl %v", d, testTTL)
	}
	if err := write(ctx, r.primary); !isReadOnlyErr(err) {
		t.Errorf("write after the revocation: %v, want SQLSTATE 25006", err)
	}
	// One witness still grants epoch 1, a majority refuses: the fence stays.
	throughout(t, 2*testTTL, 100*time.Millisecond, func() string {
		if code, _ := get(t, k, "/primary"); code != http.StatusServiceUnavailable {
			return fmt.Sprintf("/primary answered %d after the revocation", code)
		}
		if st := k.Status(ctx, false); !st.Fenced || st.HoldsLease {
			return fmt.Sprintf("unfenced after the revocation: %+v", st)
		}
		return ""
	})
}

// (e) a stale token is refused naming both tokens, an equal one repeats idempotently, and the
// highest token survives a keeper restart.
func TestInstructTokens(t *testing.T) {
	r := startRig(t)
	cfg := r.config(t, "pg-us")
	k := startKeeper(t, cfg)
	waitLease(t, k)
	ctx := witnesstest.Context(t, 3*time.Minute)
	kc := keeperClient(t, k)
	instruct := func(kc regentv1.KeeperClient, term, event uint64, act regentv1.KeeperAction) (*regentv1.InstructResponse, error) {
		return kc.Instruct(ctx, &regentv1.InstructRequest{Token: &regentv1.FencingToken{Term: term, EventId: event}, Action: act, Cluster: "orders", Node: "pg-us"})
	}
	fence, unfence := regentv1.KeeperAction_KEEPER_ACTION_FENCE, regentv1.KeeperAction_KEEPER_ACTION_UNFENCE

	resp, err := instruct(kc, 1, 5, fence)
	if err != nil || !resp.GetDone() || resp.GetHighest().GetEventId() != 5 {
		t.Fatalf("FENCE (1,5): %v %v", resp, err)
	}
	if err := write(ctx, r.primary); !isReadOnlyErr(err) {
		t.Errorf("write after FENCE: %v, want 25006", err)
	}
	waitCode(t, k, "/primary", http.StatusServiceUnavailable)
	if resp, err := instruct(kc, 1, 5, fence); err != nil || !resp.GetDone() {
		t.Errorf("repeated FENCE (1,5): %v %v", resp, err)
	}
	_, err = instruct(kc, 1, 4, unfence)
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "term 1, event 4") || !strings.Contains(err.Error(), "term 1, event 5") {
		t.Errorf("stale UNFENCE (1,4): %v, want FailedPrecondition naming both tokens", err)
	}
	if err := write(ctx, r.primary); !isReadOnlyErr(err) {
		t.Errorf("the stale UNFENCE lifted the fence: %v", err)
	}
	// The instruction fence holds although the lease is renewed all along.
	if st := k.Status(ctx, false); !st.HoldsLease || st.FenceReason != FenceInstruction {
		t.Errorf("under the FENCE instruction: %+v", st)
	}
	_, err = instruct(kc, 1, 6, regentv1.KeeperAction_KEEPER_ACTION_DEMOTE)
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "upstream") {
		t.Errorf("DEMOTE without an upstream: %v, want InvalidArgument before any token bookkeeping", err)
	}
	if _, err := kc.Instruct(ctx, &regentv1.InstructRequest{Action: fence, Cluster: "orders", Node: "pg-us"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("no token: %v", err)
	}
	if _, err := kc.Instruct(ctx, &regentv1.InstructRequest{Token: &regentv1.FencingToken{Term: 9}, Action: fence, Cluster: "orders", Node: "pg-eu"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("wrong node: %v", err)
	}
	resp, err = instruct(kc, 1, 6, unfence)
	if err != nil || !resp.GetDone() {
		t.Fatalf("UNFENCE (1,6): %v %v", resp, err)
	}
	witnesstest.Eventually(t, wait, "writes after UNFENCE", func() bool { return write(ctx, r.primary) == nil })
	ks, err := kc.KeeperStatus(ctx, &regentv1.KeeperStatusRequest{})
	if err != nil || ks.GetHighest().GetTerm() != 1 || ks.GetHighest().GetEventId() != 6 || !ks.GetHoldsLease() || ks.GetFenced() ||
		!ks.GetPostmasterRunning() || ks.GetInRecovery() || ks.GetFinalLsn() == 0 || ks.GetLeaseEpoch() != 1 || ks.GetNode() != "pg-us" {
		t.Errorf("KeeperStatus: %v %v", ks, err)
	}

	// A restart keeps the highest token.
	if err := k.Shutdown(); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if err := write(ctx, r.primary); !isReadOnlyErr(err) {
		t.Errorf("a stopped keeper must leave its primary fenced: %v", err)
	}
	k2 := startKeeper(t, cfg)
	kc2 := keeperClient(t, k2)
	_, err = instruct(kc2, 1, 5, fence)
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "term 1, event 6") {
		t.Errorf("stale token after a restart: %v", err)
	}
	waitLease(t, k2)
	if resp, err := instruct(kc2, 1, 6, unfence); err != nil || !resp.GetDone() {
		t.Errorf("equal token after a restart: %v %v", resp, err)
	}
	if resp, err := instruct(kc2, 2, 1, fence); err != nil || !resp.GetDone() || resp.GetHighest().GetTerm() != 2 {
		t.Errorf("newer term: %v %v", resp, err)
	}
}

// (f) on a standby: /replica 200 within lag bounds, /primary 503.
func TestStandbyHealthEndpoints(t *testing.T) {
	r := startRig(t)
	k := startKeeper(t, r.config(t, "pg-eu"))
	ctx := witnesstest.Context(t, 2*time.Minute)
	waitCode(t, k, "/replica", http.StatusOK)
	// A replayed commit gives the standby a last-replay timestamp to measure a time lag by.
	if err := write(ctx, r.primary); err != nil {
		t.Fatal(err)
	}
	if err := r.eu.WaitCaughtUp(ctx, r.primary); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]int{"/primary": 503, "/master": 503, "/read-only": 200, "/health": 200, "/standby": 200,
		"/replica?lag=1GB": 200, "/replica?lag=1h": 200, "/replica?lag=lots": 400} {
		if code, body := get(t, k, path); code != want {
			t.Errorf("%s: %d %s, want %d", path, code, body, want)
		}
	}
	if _, body := get(t, k, "/primary"); !strings.Contains(body, `"role":"replica"`) || !strings.Contains(body, "pg-us") {
		t.Errorf("/primary body: %s", body)
	}

	// Replay paused while the primary writes: received but not replayed WAL grows.
	if err := r.eu.PauseReplay(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.eu.WaitReplayPaused(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.primary.Exec(ctx, "CREATE TABLE lagged AS SELECT g FROM generate_series(1, 10000) g"); err != nil {
		t.Fatal(err)
	}
	waitCode(t, k, "/replica?lag=1", http.StatusServiceUnavailable)
	waitCode(t, k, "/replica?lag=500ms", http.StatusServiceUnavailable)
	for path, want := range map[string]int{"/replica?lag=1GB": 200, "/replica?lag=1h": 200, "/replica": 200} {
		if code, body := get(t, k, path); code != want {
			t.Errorf("replay paused: %s: %d %s, want %d", path, code, body, want)
		}
	}
	if err := r.eu.ResumeReplay(ctx); err != nil {
		t.Fatal(err)
	}
	waitCode(t, k, "/replica?lag=0", http.StatusOK)

	ks, err := keeperClient(t, k).KeeperStatus(ctx, &regentv1.KeeperStatusRequest{})
	if err != nil || !ks.GetInRecovery() || ks.GetHoldsLease() || ks.GetFenced() || ks.GetFinalLsn() == 0 || !ks.GetPostmasterRunning() {
		t.Errorf("KeeperStatus on the standby: %v %v", ks, err)
	}
	// A standby's keeper never fences it, however long it runs without a lease.
	if st := k.Status(ctx, false); !st.FencedAt.IsZero() || st.Designated {
		t.Errorf("standby status: %+v", st)
	}
}

// Startup: a stopped designated primary is started writable with the lease; a crashed
// postmaster is restarted in place; STOP keeps it stopped until RESTART.
func TestStartupRestartAndStop(t *testing.T) {
	r := startRig(t)
	ctx := witnesstest.Context(t, 3*time.Minute)
	if err := r.primary.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	k := startKeeper(t, r.config(t, "pg-us"))
	waitLease(t, k)
	if err := write(ctx, r.primary); err != nil {
		t.Fatalf("write after the keeper started the primary: %v", err)
	}
	if k.pg.StartedReadOnly() {
		t.Error("the designated primary holding the lease was started read-only")
	}

	pid := postmasterPID(t, r.primary)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	witnesstest.Eventually(t, wait, "a new postmaster", func() bool {
		b, err := os.ReadFile(filepath.Join(r.primary.DataDir, "postmaster.pid"))
		return err == nil && !strings.HasPrefix(string(b), strconv.Itoa(pid)+"\n")
	})
	waitLease(t, k)
	witnesstest.Eventually(t, wait, "writes after the crash", func() bool { return write(ctx, r.primary) == nil })
	// The in-place restart is still reported for a while after the server answers (so that
	// the leader does not read the witnesses' stale "down" votes as a failure), then ends.
	kc := keeperClient(t, k)
	if ks, err := kc.KeeperStatus(ctx, &regentv1.KeeperStatusRequest{}); err != nil || !ks.GetRestarting() || ks.GetRestartElapsedMs() <= 0 {
		t.Errorf("KeeperStatus right after the restart: restarting %v for %d ms (%v); want it reported", ks.GetRestarting(), ks.GetRestartElapsedMs(), err)
	}
	witnesstest.Eventually(t, wait, "the restart no longer reported", func() bool {
		ks, err := kc.KeeperStatus(ctx, &regentv1.KeeperStatusRequest{})
		return err == nil && !ks.GetRestarting()
	})

	resp, err := kc.Instruct(ctx, &regentv1.InstructRequest{Token: &regentv1.FencingToken{Term: 1, EventId: 1},
		Action: regentv1.KeeperAction_KEEPER_ACTION_STOP, Cluster: "orders", Node: "pg-us"})
	if err != nil || !resp.GetDone() || !resp.GetStopped() || resp.GetFinalLsn() == 0 {
		t.Fatalf("STOP: %v %v; want done, stopped and the final LSN", resp, err)
	}
	throughout(t, 2*testTTL, 100*time.Millisecond, func() string {
		if running, err := k.pg.Status(ctx); err != nil || running {
			return fmt.Sprintf("the keeper restarted a server stopped by instruction (running %v, %v)", running, err)
		}
		return ""
	})
	ks, err := kc.KeeperStatus(ctx, &regentv1.KeeperStatusRequest{})
	if err != nil || ks.GetPostmasterRunning() || !ks.GetFenced() || ks.GetFinalLsn() == 0 || ks.GetCrashRecovery() {
		t.Errorf("KeeperStatus of the stopped server: %v %v", ks, err)
	}
	resp, err = kc.Instruct(ctx, &regentv1.InstructRequest{Token: &regentv1.FencingToken{Term: 1, EventId: 2},
		Action: regentv1.KeeperAction_KEEPER_ACTION_RESTART, Cluster: "orders", Node: "pg-us"})
	if err != nil || !resp.GetDone() {
		t.Fatalf("RESTART: %v %v", resp, err)
	}
	waitLease(t, k)
	if err := write(ctx, r.primary); err != nil {
		t.Errorf("write after RESTART: %v", err)
	}
}

// A crash restart that outlives the lease: the keeper starts its crashed primary while it holds
// the lease, the witnesses revoke the epoch while PostgreSQL is still starting (its pg_ctl made
// 3 s slower, as a long crash recovery), and the server must not take a single write when it
// comes up — it starts read-only by its own configuration and stays so without the lease.
func TestCrashRestartOutlivingTheLeaseNeverTakesWrites(t *testing.T) {
	r := startRig(t)
	ctx := witnesstest.Context(t, 2*time.Minute)
	cfg := r.config(t, "pg-us")
	var err error
	if cfg.BinDir, err = r.bench.SlowStartBinDir(3 * time.Second); err != nil {
		t.Fatal(err)
	}
	k := startKeeper(t, cfg)
	waitLease(t, k)
	if err := syscall.Kill(postmasterPID(t, r.primary), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	witnesstest.Eventually(t, wait, "the keeper restarting the primary", func() bool { return k.Status(ctx, true).Restarting })
	for i := range r.c.Agents {
		retry(t, ctx, "revoke", func() error {
			_, err := r.c.Client(i).RevokeLease(ctx, &regentv1.RevokeLeaseRequest{Cluster: "orders", Epoch: 1, Term: 1, EventId: 1})
			return err
		})
	}
	// Write as fast as connections allow from now until the server has answered for a while:
	// the moment it comes up is the moment that matters.
	acked := false
	deadline := time.Now().Add(wait)
	var upSince time.Time
	for time.Now().Before(deadline) {
		err := write(ctx, r.primary)
		if err == nil {
			acked = true
			break
		}
		if isReadOnlyErr(err) {
			if upSince.IsZero() {
				upSince = time.Now()
			}
			if time.Since(upSince) > 2*time.Second {
				break
			}
		}
	}
	if acked || upSince.IsZero() {
		t.Fatalf("the restarted server without a lease: a write acknowledged %v, refused read-only since %v; want refusals only", acked, upSince)
	}
	if st := k.Status(ctx, false); st.HoldsLease || !st.Fenced {
		t.Errorf("status after the lease was revoked: lease %v fenced %v", st.HoldsLease, st.Fenced)
	}
}

// Startup without the lease: the witnesses revoked this node's epoch, so the keeper starts
// the stopped primary read-only and reports it fenced.
func TestStartupWithoutLeaseStartsReadOnly(t *testing.T) {
	r := startRig(t)
	ctx := witnesstest.Context(t, 2*time.Minute)
	if err := r.primary.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{1, 2} {
		retry(t, ctx, "revoke", func() error {
			_, err := r.c.Client(i).RevokeLease(ctx, &regentv1.RevokeLeaseRequest{Cluster: "orders", Epoch: 1, Term: 1, EventId: 1})
			return err
		})
	}
	k := startKeeper(t, r.config(t, "pg-us"))
	witnesstest.Eventually(t, wait, "the server started", func() bool {
		st := k.Status(ctx, false)
		return st.Answering
	})
	st := k.Status(ctx, false)
	if !st.Fenced || st.HoldsLease || !st.ReadOnly || st.FenceReason != FenceLease || st.Role() != "fenced" {
		t.Errorf("status: %+v", st)
	}
	if !k.pg.StartedReadOnly() {
		t.Error("started without the read-only option")
	}
	if err := write(ctx, r.primary); !isReadOnlyErr(err) {
		t.Errorf("write: %v, want 25006", err)
	}
	if code, body := get(t, k, "/primary"); code != http.StatusServiceUnavailable {
		t.Errorf("/primary: %d %s", code, body)
	}
	if code, _ := get(t, k, "/read-only"); code != http.StatusOK {
		t.Errorf("/read-only: %d", code)
	}
}

// When the SQL fence cannot work (here the keeper's login is wrong), the keeper stops the
// server immediately, then — this node still being the designated primary — starts it again
// read-only and leaves it so.
func TestFenceFallsBackToImmediateStop(t *testing.T) {
	r := startRig(t)
	cfg := r.config(t, "pg-us")
	cfg.Postgres.User = "no_such_role"
	k := startKeeper(t, cfg)
	ctx := witnesstest.Context(t, 2*time.Minute)
	witnesstest.Eventually(t, wait, "the lease", func() bool { return k.Status(ctx, false).HoldsLease })
	pid := postmasterPID(t, r.primary)
	for _, i := range []int{0, 2} {
		retry(t, ctx, "revoke", func() error {
			_, err := r.c.Client(i).RevokeLease(ctx, &regentv1.RevokeLeaseRequest{Cluster: "orders", Epoch: 1, Term: 1, EventId: 1})
			return err
		})
	}
	witnesstest.Eventually(t, wait, "a stop, then a read-only start", func() bool {
		if running, _ := k.pg.Status(ctx); !running || !k.pg.StartedReadOnly() {
			return false
		}
		return isReadOnlyErr(write(ctx, r.primary))
	})
	if postmasterPID(t, r.primary) == pid {
		t.Fatal("the postmaster was not stopped")
	}
	if _, body := get(t, k, "/metrics"); !strings.Contains(body, `regent_keeper_fences_total{how="stop"} 1`) {
		t.Errorf("metrics: want one fence by stop:\n%s", body)
	}
	// It stays up read-only: no stop/start loop although the keeper still cannot log in.
	pid = postmasterPID(t, r.primary)
	throughout(t, 2*testTTL, 100*time.Millisecond, func() string {
		if running, err := k.pg.Status(ctx); err != nil || !running || postmasterPID(t, r.primary) != pid {
			return fmt.Sprintf("the read-only server was stopped again (running %v, %v)", running, err)
		}
		return ""
	})
}

// A keeper that cannot reach any witness has no lease: it fences the running primary it
// finds (after waiting 2·ttl for an answer) and never reports it as primary.
func TestNoWitnessesNoWrites(t *testing.T) {
	b := pgtest.Start(t, pgtest.Options{})
	s := b.Primary
	var ws []string
	for range 3 {
		a, err := freeport.Addr()
		if err != nil {
			t.Fatal(err)
		}
		ws = append(ws, a) // nothing listens there
	}
	r := &rig{bench: b, primary: s, nodes: map[string]*pgtest.Server{"pg-us": s}, ttl: testTTL}
	r.c = &witnesstest.Cluster{}
	cfg := r.config(t, "pg-us")
	cfg.Witnesses = ws
	k := startKeeper(t, cfg)
	ctx := witnesstest.Context(t, time.Minute)
	witnesstest.Eventually(t, wait, "the keeper fencing its server", func() bool {
		return k.Status(ctx, false).FenceReason == FenceLease
	})
	if err := write(ctx, s); !isReadOnlyErr(err) {
		t.Errorf("write: %v, want 25006", err)
	}
	st := k.Status(ctx, false)
	if st.HoldsLease || st.Designated || st.FenceReason != FenceLease || st.Role() != "fenced" {
		t.Errorf("status: %+v", st)
	}
	if code, _ := get(t, k, "/primary"); code != http.StatusServiceUnavailable {
		t.Errorf("/primary: %d", code)
	}
	if _, body := get(t, k, "/metrics"); !strings.Contains(body, `regent_keeper_renew_rounds_total{outcome="no_quorum"}`) {
		t.Errorf("metrics: %s", body)
	}
}

// PROMOTE promotes the standby; but a server the witnesses do not name primary holds no
// lease, so its keeper fences it once the obligation counted from its last moment in recovery
// runs out (here no saga ever designates it).
func TestPromoteWithoutDesignationIsFenced(t *testing.T) {
	r := startRig(t)
	k := startKeeper(t, r.config(t, "pg-eu"))
	ctx := witnesstest.Context(t, 2*time.Minute)
	waitCode(t, k, "/replica", http.StatusOK)
	kc := keeperClient(t, k)
	resp, err := kc.Instruct(ctx, &regentv1.InstructRequest{Token: &regentv1.FencingToken{Term: 3, EventId: 1},
		Action: regentv1.KeeperAction_KEEPER_ACTION_PROMOTE, Cluster: "orders", Node: "pg-eu"})
	if err != nil || !resp.GetDone() || !strings.Contains(resp.GetDetail(), "promoted: timeline 2") {
		t.Fatalf("PROMOTE: %v %v", resp, err)
	}
	if rec, err := r.eu.IsInRecovery(ctx); err != nil || rec {
		t.Fatalf("pg-eu still in recovery after PROMOTE: %v %v", rec, err)
	}
	witnesstest.Eventually(t, wait, "the keeper fencing the undesignated primary", func() bool {
		return k.Status(ctx, false).FenceReason == FenceLease
	})
	if err := write(ctx, r.eu); !isReadOnlyErr(err) {
		t.Errorf("write on the undesignated primary: %v, want 25006", err)
	}
	if code, body := get(t, k, "/primary"); code != http.StatusServiceUnavailable || !strings.Contains(body, `"role":"fenced"`) {
		t.Errorf("/primary: %d %s", code, body)
	}
	// Repeating the instruction is idempotent: already a primary.
	resp, err = kc.Instruct(ctx, &regentv1.InstructRequest{Token: &regentv1.FencingToken{Term: 3, EventId: 1},
		Action: regentv1.KeeperAction_KEEPER_ACTION_PROMOTE, Cluster: "orders", Node: "pg-eu"})
	if err != nil || !resp.GetDone() || !strings.Contains(resp.GetDetail(), "already a primary") {
		t.Errorf("repeated PROMOTE: %v %v", resp, err)
	}
}
