package keeper

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/regentdb/regent/internal/pglsn"
	"github.com/regentdb/regent/internal/witnesstest"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// DEMOTE shuts the primary down cleanly, reports the exact end of its WAL (which the standby
// it follows has received and replays: the clean shutdown sent it), and starts it as a
// standby of that node; the same event's DEMOTE repeated (a new leader's term too) answers
// the recorded result, an older token is refused, another event's DEMOTE of a standby is
// not done.
func TestDemoteFollowsWithoutARewind(t *testing.T) {
	r := startRig(t)
	k := startKeeper(t, r.config(t, "pg-us"))
	waitLease(t, k)
	ctx := witnesstest.Context(t, 3*time.Minute)
	kc := keeperClient(t, k)
	demote := func(term, event uint64) (*regentv1.InstructResponse, error) {
		return kc.Instruct(ctx, &regentv1.InstructRequest{Token: &regentv1.FencingToken{Term: term, EventId: event},
			Action: regentv1.KeeperAction_KEEPER_ACTION_DEMOTE, Cluster: "orders", Node: "pg-us",
			UpstreamHost: r.eu.Host, UpstreamPort: uint32(r.eu.Port)})
	}
	if err := write(ctx, r.primary); err != nil {
		t.Fatal(err)
	}
	if _, err := kc.Instruct(ctx, &regentv1.InstructRequest{Token: &regentv1.FencingToken{Term: 1, EventId: 3},
		Action: regentv1.KeeperAction_KEEPER_ACTION_DEMOTE, Cluster: "orders", Node: "pg-us",
		UpstreamHost: r.primary.Host, UpstreamPort: uint32(r.primary.Port)}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("DEMOTE to itself: %v, want InvalidArgument", err)
	}
	resp, err := demote(1, 3)
	if err != nil || !resp.GetDone() || resp.GetFinalLsn() == 0 {
		t.Fatalf("DEMOTE: %v %v", resp, err)
	}
	final := resp.GetFinalLsn()
	var res DemoteResult
	if err := json.Unmarshal([]byte(resp.GetDetail()), &res); err != nil {
		t.Fatalf("detail %q: %v", resp.GetDetail(), err)
	}
	if res.FinalLSN != final || res.Shutdown != "fast" || res.Slot != "pg_us_slot" || res.Timeline != 1 ||
		len(res.DroppedSlots) != 2 { // the bench's standbys' slots
		t.Errorf("result %+v", res)
	}
	// Its former standbys' slots are gone (on a standby they would hold WAL for ever).
	var slots int
	if err := r.primary.QueryRow(ctx, "SELECT count(*) FROM pg_replication_slots").Scan(&slots); err != nil || slots != 0 {
		t.Errorf("replication slots left on the demoted server: %d (%v)", slots, err)
	}
	// The clean shutdown sent the standby everything, up to the final LSN.
	if err := r.eu.WaitReplayed(ctx, final); err != nil {
		t.Errorf("pg-eu did not replay the final LSN %s: %v", pglsn.Format(final), err)
	}
	if !inRecoveryNow(t, r) {
		t.Fatal("the demoted server is not in recovery")
	}
	witnesstest.Eventually(t, wait, "pg-us streaming from pg-eu", func() bool {
		var host string
		var port int64
		err := r.primary.QueryRow(ctx, "SELECT sender_host, sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming'").Scan(&host, &port)
		return err == nil && host == r.eu.Host && int(port) == r.eu.Port
	})
	if st := k.Status(ctx, false); st.Fenced || st.FenceReason != FenceNone || !st.InRecovery || st.LastRejoin != "" {
		t.Errorf("after DEMOTE: %+v", st)
	}
	// Repeats of the same event answer the recorded result without touching the server.
	pid := postmasterPID(t, r.primary)
	for _, term := range []uint64{1, 2} {
		resp, err := demote(term, 3)
		if err != nil || !resp.GetDone() || resp.GetFinalLsn() != final || !strings.Contains(resp.GetDetail(), `"repeated":true`) {
			t.Errorf("repeated DEMOTE (%d,3): %v %v", term, resp, err)
		}
	}
	if postmasterPID(t, r.primary) != pid {
		t.Error("a repeated DEMOTE restarted the server")
	}
	if _, err := demote(1, 3); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("DEMOTE (1,3) after (2,3): %v, want FailedPrecondition", err)
	}
	resp, err = demote(2, 4)
	if err != nil || resp.GetDone() || !strings.Contains(resp.GetDetail(), "already a standby") {
		t.Errorf("another event's DEMOTE of a standby: %v %v", resp, err)
	}
}

func inRecoveryNow(t *testing.T, r *rig) bool {
	t.Helper()
	v, err := r.primary.IsInRecovery(witnesstest.Context(t, wait))
	if err != nil {
		t.Fatalf("pg_is_in_recovery: %v", err)
	}
	return v
}
