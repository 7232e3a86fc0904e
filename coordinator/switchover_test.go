package coordinator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// switchoverScript is how fakeWorld answers a switchover's steps.
type switchoverScript struct {
	walEnd, final uint64 // what the fence and the demotion report
	replayed      uint64 // the target's replay position
	// replayAfterDemote is where the target's replay goes once the old primary is demoted
	// (the shutdown checkpoint arrived); 0 means the final LSN.
	replayAfterDemote uint64
	fenceErr          error
	demoteErr         error
	restoreErr        error
}

func (w *fakeWorld) FenceForSwitchover(_ context.Context, c *regentv1.Cluster, ev *regentv1.FailoverEvent) (uint64, string, error) {
	w.record("switchover-fence " + ev.GetFromNode())
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.sw.walEnd, "keeper fenced it", w.sw.fenceErr
}

func (w *fakeWorld) ReplayedLSN(_ context.Context, c *regentv1.Cluster, n *regentv1.NodeSpec) (uint64, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.sw.replayed, nil
}

func (w *fakeWorld) Demote(_ context.Context, c *regentv1.Cluster, ev *regentv1.FailoverEvent, old, up *regentv1.NodeSpec) (uint64, string, error) {
	w.record("demote " + old.GetName() + "→" + up.GetName())
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.sw.demoteErr != nil {
		return 0, "", w.sw.demoteErr
	}
	w.sw.replayed = w.sw.final
	if w.sw.replayAfterDemote != 0 {
		w.sw.replayed = w.sw.replayAfterDemote
	}
	return w.sw.final, "clean shutdown", nil
}

func (w *fakeWorld) RestorePrimary(_ context.Context, c *regentv1.Cluster, ev *regentv1.FailoverEvent) (string, error) {
	w.record("restore " + ev.GetFromNode())
	w.mu.Lock()
	defer w.mu.Unlock()
	return "old primary unfenced", w.sw.restoreErr
}

// switchoverRig is sagaRig with a switchover n1 → n2 (timeout timeoutMs) instead of a failover.
func switchoverRig(t *testing.T, timeoutMs int64) (*sagaLeader, *fakeWorld, uint64) {
	t.Helper()
	l, w, _ := sagaRig(t, nil)
	// Replace sagaRig's failover with a switchover (abort it first: one open event a cluster).
	st := l.State()
	first := st.GetFailoverEvents()[0].GetId()
	if _, err := l.Propose(context.Background(), regentv1.CommandType_COMMAND_TYPE_ADVANCE_FAILOVER,
		&regentv1.AdvanceFailoverCommand{EventId: first, Step: regentv1.FailoverStep_FAILOVER_STEP_ABORTED, Term: 3, AbortReason: "replaced"}); err != nil {
		t.Fatal(err)
	}
	// A switchover's primary is up: every witness reaches it.
	var votes []*regentv1.VoteUpdate
	for _, wit := range []string{"w1", "w2", "w3"} {
		votes = append(votes, &regentv1.VoteUpdate{Cluster: "orders", Node: "n1", Vote: &regentv1.Vote{Witness: wit, Reachable: true, Since: ts(t0)}})
	}
	if res, err := l.Propose(context.Background(), regentv1.CommandType_COMMAND_TYPE_RECORD_OBSERVATIONS, &regentv1.RecordObservationsCommand{Votes: votes}); err != nil || res.Err != nil {
		t.Fatalf("votes: %v %v", err, res.Err)
	}
	res, err := l.Propose(context.Background(), regentv1.CommandType_COMMAND_TYPE_START_FAILOVER, &regentv1.StartFailoverCommand{
		Cluster: "orders", FromNode: "n1", ToNode: "n2", TriggerReason: "switchover by alice", Term: 3, Manual: true,
		Switchover: true, SwitchoverTimeoutMs: timeoutMs})
	if err != nil || res.Err != nil {
		t.Fatalf("start switchover: %v %v", err, res.Err)
	}
	w.sw = switchoverScript{walEnd: 0x3000100, final: 0x3000180, replayed: 0x3000100}
	return l, w, res.Event.GetId()
}

func TestSwitchoverFencesWaitsDemotesThenPromotes(t *testing.T) {
	l, w, id := switchoverRig(t, 0)
	s := &Saga{Leader: l, World: w, Wait: noWait}
	if err := s.Run(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	ev := event(l, id)
	if ev.GetStep() != regentv1.FailoverStep_FAILOVER_STEP_COMPLETED {
		t.Fatalf("step %v (%s)", ev.GetStep(), ev.GetAbortReason())
	}
	calls := w.Calls()
	want := []string{"switchover-fence n1", "demote n1→n2", "promote n2"}
	if !slices.Equal(calls[:3], want) {
		t.Fatalf("calls %v, want first %v", calls, want)
	}
	// The old primary is repointed (confirmed streaming from the new primary) like the others.
	if !slices.Contains(calls, "repoint n1→n2") || !slices.Contains(calls, "repoint n3→n2") {
		t.Errorf("calls %v: the old primary and the other standbys are not repointed", calls)
	}
	if ev.GetFenceMethod() != "switchover" || ev.GetFinalLsn() != 0x3000180 || ev.GetForkLsn() != 0x3000180 ||
		ev.DataLossBytes == nil || ev.GetDataLossBytes() != 0 || !ev.GetDataLossExact() {
		t.Errorf("event: fence %q final %X fork %X loss %v exact %v", ev.GetFenceMethod(), ev.GetFinalLsn(), ev.GetForkLsn(), ev.DataLossBytes, ev.GetDataLossExact())
	}
	if !strings.Contains(strings.Join(ev.GetNotes(), "\n"), "final LSN 0/3000180") {
		t.Errorf("notes %q do not name the final LSN", ev.GetNotes())
	}
	if !slices.Contains(w.alerts, "switchover_completed") {
		t.Errorf("alerts %v", w.alerts)
	}
}

func TestSwitchoverTargetBehindAbortsAndRestores(t *testing.T) {
	l, w, id := switchoverRig(t, 60)
	w.sw.replayed = 0x3000000 // behind the fence's WAL end, and it stays there
	s := &Saga{Leader: l, World: w}
	if err := s.Run(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	ev := event(l, id)
	if ev.GetStep() != regentv1.FailoverStep_FAILOVER_STEP_ABORTED {
		t.Fatalf("step %v", ev.GetStep())
	}
	if want := []string{"switchover-fence n1", "restore n1"}; !slices.Equal(w.Calls(), want) {
		t.Errorf("calls %v, want %v", w.Calls(), want)
	}
	for _, s := range []string{"did not replay", "0/3000100", "60ms", "old primary unfenced"} {
		if !strings.Contains(ev.GetAbortReason(), s) {
			t.Errorf("abort reason %q lacks %q", ev.GetAbortReason(), s)
		}
	}
	if !slices.Contains(w.alerts, "switchover_aborted") {
		t.Errorf("alerts %v, want switchover_aborted", w.alerts)
	}
	c, _ := findEventCluster(l, id)
	if env := HookEnv(c, ev); env["REGENT_SWITCHOVER"] != "true" {
		t.Errorf("hook environment %v lacks REGENT_SWITCHOVER=true", env)
	}
	if c.GetPrimary() != "n1" || c.GetLeaseEpoch() != 1 {
		t.Errorf("after the abort: primary %s epoch %d", c.GetPrimary(), c.GetLeaseEpoch())
	}
}

func TestSwitchoverFinalLSNNotReplayedAbortsAfterTheDemotion(t *testing.T) {
	l, w, id := switchoverRig(t, 50)
	w.sw.replayAfterDemote = 0x3000150 // the shutdown checkpoint never arrives
	s := &Saga{Leader: l, World: w}
	if err := s.Run(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	ev := event(l, id)
	if ev.GetStep() != regentv1.FailoverStep_FAILOVER_STEP_ABORTED || !strings.Contains(ev.GetAbortReason(), "final LSN 0/3000180") {
		t.Fatalf("step %v reason %q", ev.GetStep(), ev.GetAbortReason())
	}
	if want := []string{"switchover-fence n1", "demote n1→n2", "restore n1"}; !slices.Equal(w.Calls(), want) {
		t.Errorf("calls %v, want %v", w.Calls(), want)
	}
}

func TestSwitchoverFenceOrDemoteFailureAborts(t *testing.T) {
	for name, set := range map[string]func(*switchoverScript){
		"fence":  func(s *switchoverScript) { s.fenceErr = errors.New("keeper unreachable") },
		"demote": func(s *switchoverScript) { s.demoteErr = errors.New("pg_ctl stop failed") },
	} {
		t.Run(name, func(t *testing.T) {
			l, w, id := switchoverRig(t, 0)
			set(&w.sw)
			s := &Saga{Leader: l, World: w, Wait: noWait, Opts: SagaOptions{DemoteDeadline: 1}}
			if err := s.Run(context.Background(), id); err != nil {
				t.Fatal(err)
			}
			ev := event(l, id)
			if ev.GetStep() != regentv1.FailoverStep_FAILOVER_STEP_ABORTED || !strings.Contains(ev.GetAbortReason(), "old primary unfenced") {
				t.Fatalf("step %v reason %q", ev.GetStep(), ev.GetAbortReason())
			}
			if slices.Contains(w.Calls(), "promote n2") {
				t.Error("promoted after a failed switchover")
			}
		})
	}
}

func TestSwitchoverRestoreFailureIsAlerted(t *testing.T) {
	l, w, id := switchoverRig(t, 0)
	w.sw.fenceErr = errors.New("keeper unreachable")
	w.sw.restoreErr = errors.New("keeper still unreachable")
	s := &Saga{Leader: l, World: w, Wait: noWait, Opts: SagaOptions{DemoteDeadline: 1}}
	if err := s.Run(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	ev := event(l, id)
	if !strings.Contains(ev.GetAbortReason(), "could NOT be made writable again") || !slices.Contains(w.alerts, "switchover_restore_failed") {
		t.Errorf("reason %q alerts %v", ev.GetAbortReason(), w.alerts)
	}
}

func TestSwitchoverTimeoutFromEventElsePolicy(t *testing.T) {
	c := &regentv1.Cluster{Policy: &regentv1.Policy{SwitchoverTimeoutMs: 9000}}
	if got := SwitchoverTimeout(c, &regentv1.FailoverEvent{SwitchoverTimeoutMs: 1500}); got.Milliseconds() != 1500 {
		t.Errorf("event timeout: %v", got)
	}
	if got := SwitchoverTimeout(c, &regentv1.FailoverEvent{}); got.Milliseconds() != 9000 {
		t.Errorf("policy timeout: %v", got)
	}
	if got := SwitchoverTimeout(&regentv1.Cluster{}, &regentv1.FailoverEvent{}); got.Seconds() != 30 {
		t.Errorf("default timeout: %v", got)
	}
}

func findEventCluster(l *sagaLeader, id uint64) (*regentv1.Cluster, error) {
	_, c := findEvent(l.State(), id)
	if c == nil {
		return nil, fmt.Errorf("no cluster for event %d", id)
	}
	return proto.Clone(c).(*regentv1.Cluster), nil
}

func TestSwitchoverPrecondition(t *testing.T) {
	up := func() []*regentv1.Vote {
		return []*regentv1.Vote{{Witness: "w1", Reachable: true}, {Witness: "w2", Reachable: true}, {Witness: "w3"}}
	}
	base := func() (*regentv1.State, *regentv1.Cluster) {
		c := &regentv1.Cluster{Name: "orders", Primary: "n1",
			Nodes: []*regentv1.NodeSpec{
				{Name: "n1", KeeperAddr: "10.0.0.1:7201"},
				{Name: "n2", KeeperAddr: "10.0.0.2:7201"},
				{Name: "n3"},
				{Name: "n4", KeeperAddr: "10.0.0.4:7201", Tags: []string{"nofailover"}},
			},
			NodeStatus: []*regentv1.NodeStatus{
				{Name: "n1", Role: regentv1.NodeRole_NODE_ROLE_PRIMARY, Votes: up()},
				{Name: "n2", Role: regentv1.NodeRole_NODE_ROLE_REPLICA, Votes: up(), WalReceiverStatus: "streaming"},
				{Name: "n3", Role: regentv1.NodeRole_NODE_ROLE_REPLICA, Votes: up(), WalReceiverStatus: "streaming"},
				{Name: "n4", Role: regentv1.NodeRole_NODE_ROLE_REPLICA, Votes: up(), WalReceiverStatus: "streaming"},
			}}
		return &regentv1.State{Clusters: []*regentv1.Cluster{c}}, c
	}
	for _, tc := range []struct {
		name, to, want string
		mutate         func(*regentv1.State, *regentv1.Cluster)
	}{
		{name: "ok", to: "n2"},
		{name: "open failover", to: "n2", want: "failover 7 is still at step fenced", mutate: func(st *regentv1.State, _ *regentv1.Cluster) {
			st.FailoverEvents = []*regentv1.FailoverEvent{{Id: 7, Cluster: "orders", Step: regentv1.FailoverStep_FAILOVER_STEP_FENCED}}
		}},
		{name: "unknown node", to: "n9", want: "not a node of the cluster (nodes: n1, n2, n3, n4)"},
		{name: "the primary", to: "n1", want: "already the primary"},
		{name: "target without keeper", to: "n3", want: "n3 has no keeper"},
		{name: "primary without keeper", to: "n2", want: "n1 has no keeper", mutate: func(_ *regentv1.State, c *regentv1.Cluster) { c.Nodes[0].KeeperAddr = "" }},
		{name: "nofailover", to: "n4", want: "tagged nofailover"},
		{name: "primary down", to: "n2", want: "primary n1 is not reachable", mutate: func(_ *regentv1.State, c *regentv1.Cluster) { c.NodeStatus[0].Votes = nil }},
		{name: "target down", to: "n2", want: "n2 is not reachable", mutate: func(_ *regentv1.State, c *regentv1.Cluster) {
			c.NodeStatus[1].Votes = []*regentv1.Vote{{Witness: "w1", Reachable: true}, {Witness: "w2"}}
		}},
		{name: "not streaming", to: "n2", want: `not streaming (WAL receiver "catchup")`, mutate: func(_ *regentv1.State, c *regentv1.Cluster) { c.NodeStatus[1].WalReceiverStatus = "catchup" }},
		{name: "replay paused", to: "n2", want: "pg_wal_replay_resume()", mutate: func(_ *regentv1.State, c *regentv1.Cluster) { c.NodeStatus[1].ReplayPaused = true }},
		{name: "not a standby", to: "n2", want: "not a standby (role fenced)", mutate: func(_ *regentv1.State, c *regentv1.Cluster) {
			c.NodeStatus[1].Role = regentv1.NodeRole_NODE_ROLE_FENCED
		}},
		{name: "wrong system", to: "n2", want: "another cluster's system identifier", mutate: func(_ *regentv1.State, c *regentv1.Cluster) { c.NodeStatus[1].WrongSystem = true }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, c := base()
			if tc.mutate != nil {
				tc.mutate(st, c)
			}
			err := SwitchoverPrecondition(st, c, tc.to)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// The old primary restarts as a standby during the switchover, so the witnesses' committed
// votes may say it is down when the saga repoints: it is confirmed all the same.
func TestSwitchoverRepointsTheOldPrimaryWhileItsVotesSayDown(t *testing.T) {
	l, w, id := switchoverRig(t, 0)
	var votes []*regentv1.VoteUpdate
	for _, wit := range []string{"w1", "w2", "w3"} {
		votes = append(votes, &regentv1.VoteUpdate{Cluster: "orders", Node: "n1", Vote: &regentv1.Vote{Witness: wit, Reachable: false, Since: ts(t0)}})
	}
	if res, err := l.Propose(context.Background(), regentv1.CommandType_COMMAND_TYPE_RECORD_OBSERVATIONS, &regentv1.RecordObservationsCommand{Votes: votes}); err != nil || res.Err != nil {
		t.Fatalf("votes: %v %v", err, res.Err)
	}
	s := &Saga{Leader: l, World: w, Wait: noWait}
	if err := s.Run(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(w.Calls(), "repoint n1→n2") {
		t.Errorf("calls %v: the old primary was not repointed", w.Calls())
	}
}
