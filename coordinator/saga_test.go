package coordinator

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/regentdb/regent/fsm"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// sagaLeader is a Leader over a real FSM: proposals are applied at once with the current term,
// and leadership can be taken away.
type sagaLeader struct {
	mu      sync.Mutex
	f       *fsm.FSM
	idx     uint64
	term    uint64
	leading bool
}

func (l *sagaLeader) Propose(_ context.Context, t regentv1.CommandType, p proto.Message) (*fsm.Result, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.leading {
		return nil, errors.New("not leader")
	}
	data, err := fsm.Encode(t, p, t0, "regent/w1")
	if err != nil {
		return nil, err
	}
	l.idx++
	return l.f.Apply(&raft.Log{Index: l.idx, Type: raft.LogCommand, Data: data}).(*fsm.Result), nil
}

func (l *sagaLeader) Term() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.term
}

func (l *sagaLeader) VerifyLeader(context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.leading {
		return errors.New("leadership lost")
	}
	return nil
}

func (l *sagaLeader) State() *regentv1.State {
	st, _ := l.f.State()
	return st
}

// fakeWorld records what the saga asked of the outside world and answers as scripted.
type fakeWorld struct {
	mu        sync.Mutex
	calls     []string
	fence     FenceOutcome
	promote   []error // returned in turn; nil once exhausted
	publish   error
	hookOut   string
	hookErr   error
	alerts    []string
	onPromote func() // runs inside Promote (e.g. to take leadership away)
	sw        switchoverScript
}

func (w *fakeWorld) record(s string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.calls = append(w.calls, s)
}

func (w *fakeWorld) Fence(_ context.Context, c *regentv1.Cluster, ev *regentv1.FailoverEvent) FenceOutcome {
	w.record("fence " + ev.GetFromNode())
	return w.fence
}

func (w *fakeWorld) Promote(_ context.Context, c *regentv1.Cluster, n *regentv1.NodeSpec) (uint64, uint32, error) {
	w.record("promote " + n.GetName())
	if w.onPromote != nil {
		w.onPromote()
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.promote) > 0 {
		err := w.promote[0]
		w.promote = w.promote[1:]
		if err != nil {
			return 0, 0, err
		}
	}
	return 0x3000060, 2, nil
}

func (w *fakeWorld) Repoint(_ context.Context, c *regentv1.Cluster, standby, primary *regentv1.NodeSpec) error {
	w.record("repoint " + standby.GetName() + "→" + primary.GetName())
	return nil
}

func (w *fakeWorld) RevokeLease(_ context.Context, c *regentv1.Cluster, ev *regentv1.FailoverEvent) (time.Time, error) {
	w.record(fmt.Sprintf("revoke epoch %d", c.GetLeaseEpoch()))
	return time.Now(), nil
}

func (w *fakeWorld) Publish(_ context.Context, c *regentv1.Cluster, primary *regentv1.NodeSpec, prev, next string) error {
	w.record(fmt.Sprintf("publish %s prev=%q next=%q", primary.GetName(), prev, next))
	return w.publish
}

func (w *fakeWorld) RunHook(_ context.Context, name, command string, env map[string]string, _ time.Duration) (string, error) {
	w.record("hook " + name + " " + env["REGENT_TO_NODE"])
	return w.hookOut, w.hookErr
}

func (w *fakeWorld) Alert(kind, severity, cluster, message string, fields map[string]any) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.alerts = append(w.alerts, kind)
}

func (w *fakeWorld) Calls() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.calls...)
}

// sagaRig is the orders cluster (n1 primary; n2…n5 standbys) with every standby reachable
// by three witnesses, DNS configured, and one failover n1 → n2 started at term 3.
func sagaRig(t *testing.T, mutate func(*regentv1.ClusterSpec)) (*sagaLeader, *fakeWorld, uint64) {
	t.Helper()
	sp := ordersSpec()
	sp.Dns = &regentv1.DnsSpec{Server: "127.0.0.1:53", Zone: "example.test.", Record: "db.example.test.", Ttl: 5, TsigKey: "k"}
	if mutate != nil {
		mutate(sp)
	}
	l := &sagaLeader{f: fsm.New(), term: 3, leading: true}
	ctx := context.Background()
	mustCommit := func(typ regentv1.CommandType, p proto.Message) *fsm.Result {
		t.Helper()
		res, err := l.Propose(ctx, typ, p)
		if err != nil || res.Err != nil {
			t.Fatalf("%v: %v %v", typ, err, res.Err)
		}
		return res
	}
	mustCommit(regentv1.CommandType_COMMAND_TYPE_APPLY_CLUSTER, &regentv1.ApplyClusterCommand{Spec: sp})
	var votes []*regentv1.VoteUpdate
	for _, n := range sp.Nodes {
		for _, w := range []string{"w1", "w2", "w3"} {
			votes = append(votes, &regentv1.VoteUpdate{Cluster: "orders", Node: n.Name, Vote: &regentv1.Vote{Witness: w, Reachable: n.Name != "n1", Since: ts(t0)}})
		}
	}
	mustCommit(regentv1.CommandType_COMMAND_TYPE_RECORD_OBSERVATIONS, &regentv1.RecordObservationsCommand{Votes: votes})
	res := mustCommit(regentv1.CommandType_COMMAND_TYPE_START_FAILOVER, &regentv1.StartFailoverCommand{
		Cluster: "orders", FromNode: "n1", ToNode: "n2", TriggerReason: "test", Term: 3, EstimatedLossBytes: 100})
	return l, &fakeWorld{fence: FenceOutcome{Method: "sql"}}, res.Event.GetId()
}

func event(l *sagaLeader, id uint64) *regentv1.FailoverEvent {
	ev, _ := findEvent(l.State(), id)
	return ev
}

func noWait(context.Context, time.Duration) error { return nil }

func TestSagaRunsEveryStepInOrder(t *testing.T) {
	l, w, id := sagaRig(t, func(sp *regentv1.ClusterSpec) { sp.Policy = &regentv1.Policy{PostFailoverCommand: "notify"} })
	s := &Saga{Leader: l, World: w, Wait: noWait}
	if err := s.Run(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	want := []string{"fence n1", "promote n2", "repoint n3→n2", "repoint n4→n2", "repoint n5→n2",
		`publish n2 prev="" next="regent term=3 event=1"`, "hook post_failover n2"}
	if got := w.Calls(); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("calls\n %v\nwant\n %v", got, want)
	}
	ev := event(l, id)
	if ev.GetStep() != regentv1.FailoverStep_FAILOVER_STEP_COMPLETED || len(ev.GetSteps()) != 6 || ev.GetFenceMethod() != "sql" ||
		ev.GetPromotedTimeline() != 2 || !ev.GetPublished() || ev.GetCompletedAt() == nil {
		t.Errorf("event %v", ev)
	}
	c, _ := l.f.Cluster("orders")
	if c.GetPrimary() != "n2" || c.GetDnsToken() != fsm.DNSToken(3, id) {
		t.Errorf("cluster primary %q token %q", c.GetPrimary(), c.GetDnsToken())
	}
	if len(w.alerts) != 1 || w.alerts[0] != "failover_completed" {
		t.Errorf("alerts %v", w.alerts)
	}
	// Running a finished saga again does nothing.
	if err := s.Run(context.Background(), id); err != nil || len(w.Calls()) != len(want) {
		t.Errorf("re-run: %v, calls %v", err, w.Calls())
	}
}

func TestSagaFenceFallback(t *testing.T) {
	t.Run("wait out the lease", func(t *testing.T) {
		l, w, id := sagaRig(t, func(sp *regentv1.ClusterSpec) { sp.Policy = &regentv1.Policy{LeaseTtlMs: 2500} })
		w.fence = FenceOutcome{Notes: []string{"sql: connection refused"}}
		var waited []time.Duration
		s := &Saga{Leader: l, World: w, Wait: func(_ context.Context, d time.Duration) error { waited = append(waited, d); return nil }}
		if err := s.Run(context.Background(), id); err != nil {
			t.Fatal(err)
		}
		ev := event(l, id)
		if ev.GetFenceMethod() != "lease" || ev.GetStep() != regentv1.FailoverStep_FAILOVER_STEP_COMPLETED {
			t.Errorf("event %v", ev)
		}
		if calls := w.Calls(); len(calls) < 2 || calls[1] != "revoke epoch 1" {
			t.Errorf("calls %v: the lease epoch must be revoked before the wait", calls)
		}
		// From the majority's acknowledgement: lease_ttl × (1 + drift), less the instant that passed.
		if len(waited) == 0 || waited[0] > 2625*time.Millisecond || waited[0] < 2500*time.Millisecond {
			t.Errorf("waited %v, want about lease_ttl 2.5s × 1.05 first", waited)
		}
	})
	t.Run("refuse", func(t *testing.T) {
		l, w, id := sagaRig(t, func(sp *regentv1.ClusterSpec) { sp.Policy = &regentv1.Policy{FenceFallback: "refuse"} })
		w.fence = FenceOutcome{Notes: []string{"sql: connection refused"}}
		s := &Saga{Leader: l, World: w, Wait: noWait}
		if err := s.Run(context.Background(), id); err != nil {
			t.Fatal(err)
		}
		ev := event(l, id)
		if ev.GetStep() != regentv1.FailoverStep_FAILOVER_STEP_ABORTED || !strings.Contains(ev.GetAbortReason(), "connection refused") {
			t.Errorf("event %v", ev)
		}
		for _, c := range w.Calls() {
			if strings.HasPrefix(c, "promote") {
				t.Error("promoted without a fence under fence_fallback refuse")
			}
		}
	})
}

func TestSagaPrePromoteVeto(t *testing.T) {
	l, w, id := sagaRig(t, func(sp *regentv1.ClusterSpec) { sp.Policy = &regentv1.Policy{PrePromoteCommand: "check"} })
	w.hookOut, w.hookErr = "freeze", errors.New("pre_promote command exited 3")
	s := &Saga{Leader: l, World: w, Wait: noWait}
	if err := s.Run(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	ev := event(l, id)
	if ev.GetStep() != regentv1.FailoverStep_FAILOVER_STEP_ABORTED || !strings.Contains(ev.GetAbortReason(), "freeze") {
		t.Errorf("event %v", ev)
	}
	if got := w.Calls(); len(got) != 2 || got[1] != "hook pre_promote n2" {
		t.Errorf("calls %v: nothing may be promoted after a veto", got)
	}
}

func TestSagaPromoteRetriesThenAborts(t *testing.T) {
	l, w, id := sagaRig(t, nil)
	w.promote = []error{errors.New("connection refused"), errors.New("connection refused"), nil}
	s := &Saga{Leader: l, World: w, Wait: noWait, Opts: SagaOptions{PromoteDeadline: time.Minute}}
	if err := s.Run(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	if ev := event(l, id); ev.GetStep() != regentv1.FailoverStep_FAILOVER_STEP_COMPLETED {
		t.Fatalf("retried promotion: %v", ev)
	}
	l, w, id = sagaRig(t, nil)
	for range 100 {
		w.promote = append(w.promote, errors.New("connection refused"))
	}
	s = &Saga{Leader: l, World: w, Opts: SagaOptions{PromoteDeadline: 50 * time.Millisecond, Backoff: 5 * time.Millisecond}}
	if err := s.Run(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	if ev := event(l, id); ev.GetStep() != regentv1.FailoverStep_FAILOVER_STEP_ABORTED || !strings.Contains(ev.GetAbortReason(), "connection refused") {
		t.Fatalf("promotion failing past its deadline: %v", ev)
	}
}

func TestSagaPublishFailureCompletesAndAlerts(t *testing.T) {
	l, w, id := sagaRig(t, nil)
	w.publish = errors.New("REFUSED")
	s := &Saga{Leader: l, World: w, Opts: SagaOptions{PublishDeadline: 20 * time.Millisecond, Backoff: 5 * time.Millisecond}}
	if err := s.Run(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	ev := event(l, id)
	if ev.GetStep() != regentv1.FailoverStep_FAILOVER_STEP_COMPLETED || ev.GetPublished() || !strings.Contains(ev.GetPublishError(), "REFUSED") {
		t.Errorf("event %v", ev)
	}
	if c, _ := l.f.Cluster("orders"); c.GetDnsToken() != "" {
		t.Errorf("token %q recorded for a failed publish", c.GetDnsToken())
	}
	found := false
	for _, a := range w.alerts {
		found = found || a == "publish_failed"
	}
	if !found {
		t.Errorf("alerts %v lack publish_failed", w.alerts)
	}
}

func TestSagaStopsWhenLeadershipIsLostAndANewLeaderResumes(t *testing.T) {
	l, w, id := sagaRig(t, nil)
	// Leadership is lost while promoting: the promotion happened, its step was not committed.
	w.onPromote = func() {
		l.mu.Lock()
		l.leading = false
		l.mu.Unlock()
	}
	s := &Saga{Leader: l, World: w, Wait: noWait}
	if err := s.Run(context.Background(), id); !errors.Is(err, ErrNotLeading) {
		t.Fatalf("Run after losing leadership: %v, want ErrNotLeading", err)
	}
	if ev := event(l, id); ev.GetStep() != regentv1.FailoverStep_FAILOVER_STEP_FENCED || ev.GetTerm() != 3 {
		t.Fatalf("event %v: want it left at fenced, owned by term 3", ev)
	}
	// A new leader (term 4) resumes: it does not fence again, repeats the idempotent promotion
	// of the same node, and owns the saga from there.
	w.onPromote = nil
	l.mu.Lock()
	l.leading, l.term = true, 4
	l.mu.Unlock()
	if err := (&Saga{Leader: l, World: w, Wait: noWait}).Run(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	fences, promotes := 0, map[string]int{}
	for _, c := range w.Calls() {
		if strings.HasPrefix(c, "fence") {
			fences++
		}
		if n, ok := strings.CutPrefix(c, "promote "); ok {
			promotes[n]++
		}
	}
	if fences != 1 || len(promotes) != 1 || promotes["n2"] != 2 {
		t.Errorf("fences %d, promotions %v: want one fence and only n2 promoted (once per leader)", fences, promotes)
	}
	ev := event(l, id)
	if ev.GetStep() != regentv1.FailoverStep_FAILOVER_STEP_COMPLETED || ev.GetTerm() != 4 {
		t.Errorf("event %v", ev)
	}
	if c, _ := l.f.Cluster("orders"); c.GetDnsToken() != fsm.DNSToken(4, id) {
		t.Errorf("token %q, want the resuming leader's", c.GetDnsToken())
	}
	// The stale leader of term 3 can no longer record anything.
	l.mu.Lock()
	l.term = 3
	l.mu.Unlock()
	res, err := l.Propose(context.Background(), regentv1.CommandType_COMMAND_TYPE_ADVANCE_FAILOVER,
		&regentv1.AdvanceFailoverCommand{EventId: id, Step: regentv1.FailoverStep_FAILOVER_STEP_COMPLETED, Term: 3})
	if err != nil || res.Err == nil {
		t.Errorf("a term-3 commit after term 4 took over was accepted: %v %v", err, res)
	}
}
