package cli

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// rejoinEvent is failover 9 of orders (pg-us → pg-eu, completed), with the given rejoin.
func rejoinEvent(rj *regentv1.Rejoin) *regentv1.FailoverEvent {
	loss := int64(1800)
	return &regentv1.FailoverEvent{Id: 9, Cluster: "orders", FromNode: "pg-us", FromRegion: "us-east", ToNode: "pg-eu",
		ToRegion: "eu-west", Step: regentv1.FailoverStep_FAILOVER_STEP_COMPLETED, StartedAt: ago(2 * time.Minute),
		CompletedAt: ago(110 * time.Second), DataLossBytes: &loss, Rejoin: rj}
}

// measured sets the keeper's exact figures on e.
func measured(e *regentv1.FailoverEvent) *regentv1.FailoverEvent {
	loss, lost := int64(56056), int64(25)
	e.DataLossBytes, e.DataLossExact, e.LostTransactions = &loss, true, &lost
	e.ForkLsn, e.FinalLsn = 0x402E830, 0x403C328
	return e
}

func TestRejoinShow(t *testing.T) {
	rebuilding := measured(rejoinEvent(&regentv1.Rejoin{Node: "pg-us", Status: regentv1.RejoinStatus_REJOIN_STATUS_REBUILDING,
		Method: "rewind", BytesBehind: 3 << 20, RateBytesPerSecond: 1 << 20, EtaSeconds: 3, StartedAt: ago(100 * time.Second),
		Detail: "rewind onto pg-eu; streaming, catching up"}))
	st := cannedState()
	// An older event of orders, and one of another cluster: neither is shown.
	st.FailoverEvents = append(st.FailoverEvents, rebuilding,
		&regentv1.FailoverEvent{Id: 10, Cluster: "billing", Step: regentv1.FailoverStep_FAILOVER_STEP_DECIDED})
	r := run(t, start(t, &fakeServer{state: st}), "rejoin", "--cluster", "orders").mustSucceed(t)
	golden(t, "rejoin.txt", r.stdout)
	for _, want := range []string{
		"failover 9 of orders: pg-us (us-east) → pg-eu (eu-west), completed\n",
		"rejoin of pg-us: rebuilding (rewind)\n",
		"  data loss  54.7 KiB (56056 bytes, exact): fork 0/402E830 → final 0/403C328\n",
		"  lost       25 transactions (regent's own heartbeat commits not counted)\n",
		"  catch-up   3.0 MiB behind, 1.0 MiB/s, ETA 3.0s\n",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("rejoin lacks %q:\n%s", want, r.stdout)
		}
	}

	// Before the keeper measured anything: the estimate, and why the rest is unknown.
	st.FailoverEvents = []*regentv1.FailoverEvent{rejoinEvent(nil)}
	r = run(t, start(t, &fakeServer{state: st}), "rejoin", "--cluster", "orders").mustSucceed(t)
	for _, want := range []string{"rejoin of pg-us: not started\n", "~1.8 KiB (est.); exact once the old primary's keeper has measured it",
		"unknown transactions", "keeper_addr in the spec"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("rejoin before any measurement lacks %q:\n%s", want, r.stdout)
		}
	}
	st.FailoverEvents = nil
	r = run(t, start(t, &fakeServer{state: st}), "rejoin", "--cluster", "orders").mustSucceed(t)
	if r.stdout != "no failover events for cluster orders: nothing to rejoin\n" {
		t.Errorf("without events: %q", r.stdout)
	}
	if r := run(t, "", "rejoin"); r.code != ExitUsage || !strings.Contains(r.stderr, "rejoin needs --cluster C") {
		t.Errorf("rejoin without --cluster: exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestRejoinJSON(t *testing.T) {
	st := cannedState()
	st.FailoverEvents = []*regentv1.FailoverEvent{measured(rejoinEvent(&regentv1.Rejoin{Status: regentv1.RejoinStatus_REJOIN_STATUS_CAUGHT_UP, Method: "rewind"}))}
	r := run(t, start(t, &fakeServer{state: st}), "-o", "json", "rejoin", "--cluster", "orders").mustSucceed(t)
	m := jsonObject(t, r.stdout)
	hasKeys(t, "rejoin -o json", m, "id", "rejoin", "data_loss_bytes", "lost_transactions", "fork_lsn", "final_lsn")
}

// rejoinWatch is the Watch stream of a rejoin's catch-up: pending with an error, rebuilding
// with the keeper's figures, progress, another cluster's event, caught up.
func rejoinWatch() []*regentv1.WatchEvent {
	rj := func(s regentv1.RejoinStatus, behind uint64, rate, eta float64, detail string) *regentv1.Rejoin {
		return &regentv1.Rejoin{Node: "pg-us", Status: s, Method: "rewind", BytesBehind: behind, RateBytesPerSecond: rate,
			EtaSeconds: eta, Detail: detail, StartedAt: ago(10 * time.Second)}
	}
	ev := func(i uint64, e *regentv1.FailoverEvent) *regentv1.WatchEvent {
		return &regentv1.WatchEvent{Index: i, Kind: "failover_event", Key: "9", FailoverEvent: e}
	}
	pending := rejoinEvent(&regentv1.Rejoin{Node: "pg-us", Status: regentv1.RejoinStatus_REJOIN_STATUS_PENDING,
		Detail: "the keeper of pg-us does not answer; retrying in 2s"})
	return []*regentv1.WatchEvent{
		ev(101, pending),
		ev(102, measured(rejoinEvent(rj(regentv1.RejoinStatus_REJOIN_STATUS_REBUILDING, 0, 0, 0, "rewind onto pg-eu")))),
		ev(103, measured(rejoinEvent(rj(regentv1.RejoinStatus_REJOIN_STATUS_REBUILDING, 4<<20, 0, 0, "")))),
		ev(104, measured(rejoinEvent(rj(regentv1.RejoinStatus_REJOIN_STATUS_REBUILDING, 2<<20, 1<<20, 2, "")))),
		ev(104, measured(rejoinEvent(rj(regentv1.RejoinStatus_REJOIN_STATUS_REBUILDING, 2<<20, 1<<20, 2, "")))), // no change
		{Index: 105, Kind: "failover_event", Key: "10", FailoverEvent: &regentv1.FailoverEvent{Id: 10, Cluster: "billing"}},
		ev(106, measured(rejoinEvent(rj(regentv1.RejoinStatus_REJOIN_STATUS_REBUILDING, 512<<10, 1536<<10, 0.3, "")))),
		ev(107, measured(rejoinEvent(rj(regentv1.RejoinStatus_REJOIN_STATUS_CAUGHT_UP, 0, 0, 0, "caught up")))),
		ev(108, measured(rejoinEvent(rj(regentv1.RejoinStatus_REJOIN_STATUS_CAUGHT_UP, 0, 0, 0, "after the end")))),
	}
}

func TestRejoinWatch(t *testing.T) {
	st := cannedState()
	st.Index = 100
	st.FailoverEvents = []*regentv1.FailoverEvent{rejoinEvent(nil)}
	f := &fakeServer{state: st, watch: rejoinWatch()}
	addr := start(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out, errOut syncBuffer
	code := runWith(ctx, []string{"--addr", addr, "rejoin", "--cluster", "orders", "--watch"}, &out, &errOut,
		func(string) string { return "" }, func() time.Time { return testNow })
	if code != ExitOK || errOut.String() != "" {
		t.Fatalf("rejoin --watch: exit %d, stderr %q, stdout:\n%s", code, errOut.String(), out.String())
	}
	golden(t, "rejoin_watch.txt", out.String())
	for _, want := range []string{
		"pg-us pending: the keeper of pg-us does not answer; retrying in 2s\n",
		"pg-us rebuilding [####################] 0 B behind, rate unknown; data loss 54.7 KiB, 25 lost transactions\n",
		"pg-us rebuilding [--------------------] 4.0 MiB behind, rate unknown\n",
		"pg-us rebuilding [##########----------] 2.0 MiB behind, 1.0 MiB/s, ETA 2.0s\n",
		"pg-us rebuilding [#################---] 512.0 KiB behind, 1.5 MiB/s, ETA 300ms\n",
		"pg-us caught up (rewind); data loss 54.7 KiB, 25 lost transactions\n",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("rejoin --watch lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "after the end") || strings.Count(out.String(), "2.0 MiB behind") != 1 {
		t.Errorf("rejoin --watch printed a repeat or went on after caught up:\n%s", out.String())
	}
	if got := f.got(); len(got) != 2 || got[1].method != "Watch" || got[1].req.(*regentv1.WatchRequest).GetFromIndex() != 100 {
		t.Errorf("calls = %v, want ListFailoverEvents then Watch from index 100", got)
	}

	// A failed rejoin ends the watch with exit 1.
	failed := proto.Clone(rejoinEvent(&regentv1.Rejoin{Status: regentv1.RejoinStatus_REJOIN_STATUS_FAILED, Detail: "pg_rewind: no common ancestor",
		FinishedAt: timestamppb.New(testNow)})).(*regentv1.FailoverEvent)
	f = &fakeServer{state: st, watch: []*regentv1.WatchEvent{{Index: 101, Kind: "failover_event", Key: "9", FailoverEvent: failed}}}
	r := run(t, start(t, f), "rejoin", "--cluster", "orders", "--watch")
	if r.code == ExitOK || !strings.Contains(r.stdout, "pg-us failed: pg_rewind: no common ancestor") || !strings.Contains(r.stderr, "the rejoin failed") {
		t.Errorf("failed rejoin: exit %d\nstdout %s\nstderr %s", r.code, r.stdout, r.stderr)
	}
}
