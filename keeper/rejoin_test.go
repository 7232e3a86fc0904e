package keeper

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/regentdb/regent/internal/witnesstest"
	"github.com/regentdb/regent/pgconnect"
	"github.com/regentdb/regent/pgops"
	"github.com/regentdb/regent/pgtest"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
	"github.com/regentdb/regent/rejoin"
)

// lostRows is how many rows (one transaction each) the old primary commits after its
// standby stopped: the failover loses exactly these.
const lostRows = 25

// rejoinScene is a failover the old primary's keeper must repair: lostRows rows committed on
// the primary (pg-us) after its standby pg-eu stopped, the epoch revoked (the keeper fences),
// the primary killed with SIGKILL, pg-eu promoted. It returns the rig, the old primary's
// keeper, both servers and the lost rows' ids.
func rejoinScene(t *testing.T, ctx context.Context) (r *rig, k *Keeper, old, nu *pgtest.Server, ids []int64) {
	t.Helper()
	// No autovacuum: the only transactions committed after the standby stops are the test's.
	r = startRigWith(t, testTTL, map[string]string{"autovacuum": "off"})
	old, nu = r.primary, r.eu
	if err := old.Exec(ctx, `CREATE TABLE `+pgtest.LoadTable+` (id bigserial PRIMARY KEY, payload text)`); err != nil {
		t.Fatal(err)
	}
	// The witnesses' leader writes a heartbeat row on the primary (a commit) every probe
	// interval: refuse those writes (they abort, and an abort is not a lost transaction) so
	// that the test's rows are the only commits after the fork.
	witnesstest.Eventually(t, wait, "the heartbeat table on the primary", func() bool {
		var exists bool
		return old.QueryRow(ctx, "SELECT to_regclass('regent.heartbeat') IS NOT NULL").Scan(&exists) == nil && exists
	})
	if err := old.Exec(ctx, `CREATE FUNCTION refuse_heartbeat() RETURNS trigger LANGUAGE plpgsql AS
		$$BEGIN RAISE EXCEPTION 'no heartbeats in this test'; END$$;
		CREATE TRIGGER refuse_heartbeat BEFORE INSERT OR UPDATE ON regent.heartbeat
		FOR EACH ROW EXECUTE FUNCTION refuse_heartbeat()`); err != nil {
		t.Fatal(err)
	}
	if err := nu.WaitCaughtUp(ctx, old); err != nil {
		t.Fatal(err)
	}
	k = startKeeper(t, r.config(t, "pg-us"))
	waitLease(t, k)
	if err := nu.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	c, err := old.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for range lostRows {
		var id int64
		if err := c.QueryRow(ctx, `INSERT INTO `+pgtest.LoadTable+` (payload) VALUES (repeat('x', 300)) RETURNING id`).Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	c.Close(ctx)

	// The leader's failover: revoke the old primary's epoch at a majority (its keeper fences
	// it), the old primary dies, the standby is promoted.
	for _, i := range []int{0, 1} {
		retry(t, ctx, "revoke", func() error {
			_, err := r.c.Client(i).RevokeLease(ctx, &regentv1.RevokeLeaseRequest{Cluster: "orders", Epoch: 1, Term: 1, EventId: 1})
			return err
		})
	}
	witnesstest.Eventually(t, wait, "the keeper fencing its server", func() bool {
		return !k.Status(ctx, false).FencedAt.IsZero()
	})
	if err := old.Kill9(); err != nil {
		t.Fatal(err)
	}
	if err := nu.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := nu.Promote(ctx); err != nil {
		t.Fatal(err)
	}

	return r, k, old, nu, ids
}

// rejoinRequest is a REJOIN of pg-us onto upstream with token (term, event).
func rejoinRequest(term, event uint64, upstream *pgtest.Server) *regentv1.InstructRequest {
	return &regentv1.InstructRequest{Token: &regentv1.FencingToken{Term: term, EventId: event},
		Action: regentv1.KeeperAction_KEEPER_ACTION_REJOIN, Cluster: "orders", Node: "pg-us",
		UpstreamHost: upstream.Host, UpstreamPort: uint32(upstream.Port)}
}

// REJOIN after a failover: the old primary's keeper measures the loss exactly, rewinds its
// server onto the new primary's timeline and starts it as a standby streaming from it; an
// equal token repeats the answer without redoing the work, an older one is refused.
func TestRejoinAfterFailover(t *testing.T) {
	ctx := witnesstest.Context(t, 4*time.Minute)
	_, k, old, nu, ids := rejoinScene(t, ctx)

	kc := keeperClient(t, k)
	rejoinReq := func(term, event uint64) *regentv1.InstructRequest { return rejoinRequest(term, event, nu) }
	noUpstream := rejoinReq(2, 1)
	noUpstream.UpstreamHost = ""
	if _, err := kc.Instruct(ctx, noUpstream); status.Code(err) != codes.InvalidArgument {
		t.Errorf("REJOIN without upstream: %v, want InvalidArgument", err)
	}
	resp, err := kc.Instruct(ctx, rejoinReq(2, 1))
	if err != nil || !resp.GetDone() {
		t.Fatalf("REJOIN: %v %v", resp, err)
	}
	var res RejoinResult
	if err := json.Unmarshal([]byte(resp.GetDetail()), &res); err != nil {
		t.Fatalf("REJOIN detail %q: %v", resp.GetDetail(), err)
	}
	t.Logf("REJOIN: %s", resp.GetDetail())
	if res.LostTransactions != lostRows || res.DataLossBytes <= 0 || res.Method != "rewind" ||
		res.Timeline != 1 || res.NewTimeline != 2 || res.Slot != "pg_us_slot" {
		t.Errorf("REJOIN result %+v: want %d lost transactions, some bytes, a rewind from timeline 1 onto 2 via pg_us_slot", res, lostRows)
	}
	if rep := resp.GetRejoin(); !rep.GetOk() || rep.GetMethod() != "rewind" || rep.GetDataLossBytes() != res.DataLossBytes ||
		rep.GetLostTransactions() != lostRows || rep.GetFinalLsn() == 0 || rep.GetForkLsn() == 0 ||
		rep.GetFinalLsn()-rep.GetForkLsn() != uint64(res.DataLossBytes) || rep.GetToken().GetTerm() != 2 || rep.GetFinishedAt() == nil {
		t.Errorf("REJOIN report %v does not match its detail %+v", rep, res)
	}
	if err := pgops.WaitStreamingFrom(ctx, k.target(), nu.Host, uint16(nu.Port)); err != nil {
		t.Fatal(err)
	}
	if ks, err := kc.KeeperStatus(ctx, &regentv1.KeeperStatusRequest{}); err != nil || ks.GetRejoining() ||
		ks.GetLastRejoin().GetLostTransactions() != lostRows || !ks.GetLastRejoin().GetOk() {
		t.Errorf("KeeperStatus after the rejoin: %v %v", ks, err)
	}
	if tl, err := old.Timeline(ctx); err != nil || tl != 2 {
		t.Errorf("the rejoined node receives timeline %d (%v), want 2", tl, err)
	}
	if rec, err := old.IsInRecovery(ctx); err != nil || !rec {
		t.Errorf("the rejoined node in recovery: %v %v", rec, err)
	}
	missing, err := nu.MissingRows(ctx, ids)
	if err != nil || len(missing) != lostRows {
		t.Errorf("rows missing on the new primary: %d of %d (%v)", len(missing), lostRows, err)
	}

	// The same token again: the same answer, nothing redone.
	again, err := kc.Instruct(ctx, rejoinReq(2, 1))
	if err != nil || !again.GetDone() || again.GetDetail() != resp.GetDetail() {
		t.Errorf("repeated REJOIN (2,1): %v %v; want the first answer %q", again, err, resp.GetDetail())
	}
	if err := pgops.WaitStreamingFrom(ctx, k.target(), nu.Host, uint16(nu.Port)); err != nil {
		t.Errorf("after the repeated REJOIN: %v", err)
	}
	// An older token is refused.
	if _, err := kc.Instruct(ctx, rejoinReq(1, 9)); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "term 1, event 9") {
		t.Errorf("stale REJOIN (1,9): %v, want FailedPrecondition", err)
	}
	// A newer leader's token for the same event (the rejoin done, not yet recorded when the
	// leader changed): the recorded answer, the standby left running.
	pid := func() string {
		b, _ := os.ReadFile(filepath.Join(old.DataDir, "postmaster.pid"))
		first, _, _ := strings.Cut(string(b), "\n")
		return first
	}
	before := pid()
	if next, err := kc.Instruct(ctx, rejoinReq(3, 1)); err != nil || !next.GetDone() || next.GetDetail() != resp.GetDetail() ||
		next.GetRejoin().GetToken().GetTerm() != 3 || next.GetRejoin().GetLostTransactions() != lostRows {
		t.Errorf("REJOIN (3,1) after (2,1): %v %v; want the first answer %q", next, err, resp.GetDetail())
	}
	if after := pid(); before == "" || after != before {
		t.Errorf("REJOIN (3,1) restarted the standby: postmaster %q, then %q", before, after)
	}
	st := k.Status(ctx, true)
	if st.LastRejoin != resp.GetDetail() || st.LastRejoinToken != (Token{Term: 2, Event: 1}) || !st.InRecovery || st.Fenced {
		t.Errorf("status after the rejoin: %+v", st)
	}
	// The keeper leaves the standby alone: still streaming a lease period later.
	throughout(t, 2*testTTL, 200*time.Millisecond, func() string {
		if o := k.observe(ctx, time.Second); o.OK && !o.InRecovery {
			return "the rejoined node left recovery"
		}
		return ""
	})
	if err := pgops.WaitStreamingFrom(ctx, k.target(), nu.Host, uint16(nu.Port)); err != nil {
		t.Errorf("a lease period after the rejoin: %v", err)
	}
}

// A rejoin interrupted after its rewind (the keeper killed with the data directory already on
// the new timeline, nothing saved) resumes: a restarted keeper does not start the rewound
// server, and the next REJOIN does not measure the rewound WAL — it reports the loss as unknown
// (-1) and says why — and finishes configuring and starting the standby.
func TestRejoinResumesAfterAnInterruptedRewind(t *testing.T) {
	ctx := witnesstest.Context(t, 4*time.Minute)
	r, k, old, nu, _ := rejoinScene(t, ctx)
	// What an interrupted REJOIN leaves: the server stopped and marked so, the rewind done,
	// no result, the keeper gone.
	kc := keeperClient(t, k)
	if resp, err := kc.Instruct(ctx, &regentv1.InstructRequest{Token: &regentv1.FencingToken{Term: 2, EventId: 1},
		Action: regentv1.KeeperAction_KEEPER_ACTION_STOP, Cluster: "orders", Node: "pg-us"}); err != nil || !resp.GetDone() {
		t.Fatalf("STOP: %v %v", resp, err)
	}
	cfg := k.cfg
	if err := k.Shutdown(); err != nil {
		t.Fatal(err)
	}
	l := rejoin.Local{BinDir: r.bench.BinDir(), DataDir: old.DataDir}
	if os.Geteuid() == 0 {
		l.RunAs = cfg.RunAs
	}
	up := pgconnect.Target{Host: nu.Host, Port: uint16(nu.Port), User: pgtest.BootstrapUser, Database: "postgres", SSLMode: "disable"}
	if _, err := rejoin.Rewind(ctx, l, up, rejoin.RewindOptions{}); err != nil {
		t.Fatal(err)
	}
	k = startKeeper(t, cfg)
	// The restarted keeper leaves the rewound server stopped for the REJOIN.
	throughout(t, 2*testTTL, 200*time.Millisecond, func() string {
		if k.checkRunning(ctx) {
			return "the restarted keeper started the rewound server before the REJOIN"
		}
		return ""
	})
	resp, err := keeperClient(t, k).Instruct(ctx, rejoinRequest(2, 1, nu))
	if err != nil || !resp.GetDone() {
		t.Fatalf("REJOIN after an interrupted rewind: %v %v", resp, err)
	}
	t.Logf("REJOIN: %s", resp.GetDetail())
	var res RejoinResult
	if err := json.Unmarshal([]byte(resp.GetDetail()), &res); err != nil {
		t.Fatal(err)
	}
	if !res.Resumed || res.DataLossBytes != -1 || res.LostTransactions != -1 || res.Method != "rewind" ||
		!strings.Contains(res.Note, "unknown") {
		t.Errorf("resumed REJOIN result %+v: want resumed, a rewind, the loss unknown (-1) and a note saying so", res)
	}
	if rep := resp.GetRejoin(); !rep.GetOk() || rep.GetDataLossBytes() != -1 || rep.GetLostTransactions() != -1 || !strings.Contains(rep.GetError(), "unknown") {
		t.Errorf("resumed REJOIN report %v", rep)
	}
	if err := pgops.WaitStreamingFrom(ctx, k.target(), nu.Host, uint16(nu.Port)); err != nil {
		t.Fatal(err)
	}
	if rec, err := old.IsInRecovery(ctx); err != nil || !rec {
		t.Errorf("the resumed node in recovery: %v %v", rec, err)
	}
}

// A REJOIN whose caller stops waiting (a leader's deadline, a leader that died) runs to its
// end anyway: the keeper reports rejoining meanwhile, then the result, and the same token
// repeated answers that result without redoing the rewind.
func TestRejoinOutlivesItsCaller(t *testing.T) {
	ctx := witnesstest.Context(t, 4*time.Minute)
	_, k, _, nu, _ := rejoinScene(t, ctx)
	kc := keeperClient(t, k)
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, err := kc.Instruct(short, rejoinRequest(2, 1, nu))
	cancel()
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("REJOIN with a 50ms deadline: %v, want the caller's DeadlineExceeded (a rewind takes longer)", err)
	}
	var last *regentv1.KeeperStatusResponse
	witnesstest.Eventually(t, wait, "the abandoned rejoin finishing", func() bool {
		ks, err := kc.KeeperStatus(ctx, &regentv1.KeeperStatusRequest{})
		if err != nil {
			return false
		}
		last = ks
		return !ks.GetRejoining() && ks.GetLastRejoin().GetOk()
	})
	if rep := last.GetLastRejoin(); rep.GetLostTransactions() != lostRows || rep.GetToken().GetTerm() != 2 {
		t.Errorf("last rejoin %v: want %d lost transactions under term 2", rep, lostRows)
	}
	if err := pgops.WaitStreamingFrom(ctx, k.target(), nu.Host, uint16(nu.Port)); err != nil {
		t.Fatal(err)
	}
	again, err := kc.Instruct(ctx, rejoinRequest(2, 1, nu))
	if err != nil || !again.GetDone() || again.GetRejoin().GetLostTransactions() != lostRows {
		t.Errorf("the same REJOIN again: %v %v; want the recorded result", again, err)
	}
}
