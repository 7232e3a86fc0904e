package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
	"github.com/regentdb/regent/spec"
)

const (
	stepDecided   = regentv1.FailoverStep_FAILOVER_STEP_DECIDED
	stepFenced    = regentv1.FailoverStep_FAILOVER_STEP_FENCED
	stepPromoted  = regentv1.FailoverStep_FAILOVER_STEP_PROMOTED
	stepRepointed = regentv1.FailoverStep_FAILOVER_STEP_REPOINTED
	stepPublished = regentv1.FailoverStep_FAILOVER_STEP_PUBLISHED
	stepCompleted = regentv1.FailoverStep_FAILOVER_STEP_COMPLETED
	stepAborted   = regentv1.FailoverStep_FAILOVER_STEP_ABORTED

	active = regentv1.ChannelStatus_CHANNEL_STATUS_ACTIVE
	failed = regentv1.ChannelStatus_CHANNEL_STATUS_FAILED
)

func pauseCmd(cluster string, paused bool, reason string) entry {
	return entry{typ: regentv1.CommandType_COMMAND_TYPE_SET_PAUSED,
		payload: &regentv1.SetPausedCommand{Cluster: cluster, Paused: paused, Reason: reason}, actor: "alice"}
}

func refusalCmd(cluster, reason string) entry {
	return entry{typ: regentv1.CommandType_COMMAND_TYPE_RECORD_REFUSAL,
		payload: &regentv1.RecordRefusalCommand{Cluster: cluster, Reason: reason}, actor: "regent/w1"}
}

func startCmd(c *regentv1.StartFailoverCommand) entry {
	return entry{typ: regentv1.CommandType_COMMAND_TYPE_START_FAILOVER, payload: c, actor: "regent/w1"}
}

func advanceCmd(c *regentv1.AdvanceFailoverCommand) entry {
	return entry{typ: regentv1.CommandType_COMMAND_TYPE_ADVANCE_FAILOVER, payload: c, actor: "regent/w1"}
}

// step advances event id to step s with term term (and the fields each step needs).
func step(id uint64, s regentv1.FailoverStep, term uint64) entry {
	c := &regentv1.AdvanceFailoverCommand{EventId: id, Step: s, Term: term}
	switch s {
	case stepFenced:
		c.FenceMethod = "sql"
	case stepAborted:
		c.AbortReason = "test abort"
	}
	return advanceCmd(c)
}

// ordersStart is an automatic failover of orders from n1 (r0) to n2 (r1).
func ordersStart() *regentv1.StartFailoverCommand {
	return &regentv1.StartFailoverCommand{Cluster: "orders", FromNode: "n1", ToNode: "n2", TriggerReason: "primary n1 unreachable",
		Term: 2, OldPrimaryLsn: 5000, EstimatedLossBytes: 300}
}

// sagaState: cluster orders with n1 (r0, primary), n2 (r1), n3 (r2), n4 (r0), a standing
// refusal, and channels 1 r0→r1, 2 r0→r2, 4 r0→r0; cluster billing (b1 in r0) with channel
// 3 r0→r1. No failover events yet.
func sagaState() *regentv1.State {
	ts := timestamppb.New(t0)
	nodes := []*regentv1.NodeSpec{
		{Name: "n1", Region: "r0", Host: "10.0.0.1", Port: 5432},
		{Name: "n2", Region: "r1", Host: "10.0.0.2", Port: 5432},
		{Name: "n3", Region: "r2", Host: "10.0.0.3", Port: 5432},
		{Name: "n4", Region: "r0", Host: "10.0.0.4", Port: 5432},
	}
	status := []*regentv1.NodeStatus{
		{Name: "n1", Role: regentv1.NodeRole_NODE_ROLE_PRIMARY, CurrentLsn: 5000},
		{Name: "n2", Role: regentv1.NodeRole_NODE_ROLE_REPLICA, ReceivedLsn: 4700},
		{Name: "n3", Role: regentv1.NodeRole_NODE_ROLE_REPLICA, ReceivedLsn: 4000},
		{Name: "n4", Role: regentv1.NodeRole_NODE_ROLE_REPLICA, ReceivedLsn: 4900},
	}
	ch := func(id uint64, cluster, p, s string) *regentv1.ReplicationChannel {
		return &regentv1.ReplicationChannel{Id: id, Cluster: cluster, PrimaryRegion: p, SecondaryRegion: s, Status: active,
			ApplyLsn: 4000, PrimaryLsn: 5000, LagBytes: 1000, LagSeconds: 3, LastSeenAt: ts}
	}
	return &regentv1.State{
		Clusters: []*regentv1.Cluster{
			{Name: "billing", Primary: "b1", Nodes: []*regentv1.NodeSpec{{Name: "b1", Region: "r0", Host: "h", Port: 5432}},
				NodeStatus: []*regentv1.NodeStatus{{Name: "b1"}}, SpecVersion: 1, CreatedAt: ts, UpdatedAt: ts},
			{Name: "orders", Primary: "n1", Nodes: nodes, NodeStatus: status, Policy: spec.WithDefaults(nil), SpecVersion: 1,
				CreatedAt: ts, UpdatedAt: ts, Refusal: "no candidate", RefusalAt: ts, DnsToken: "regent term=1 event=0"},
		},
		Members:       []*regentv1.Member{{Name: "w1", Id: "id-1", RaftAddr: "w1:1"}},
		Channels:      []*regentv1.ReplicationChannel{ch(1, "orders", "r0", "r1"), ch(2, "orders", "r0", "r2"), ch(3, "billing", "r0", "r1"), ch(4, "orders", "r0", "r0")},
		NextChannelId: 5,
	}
}

func sagaFSM(t *testing.T) *FSM { return withState(t, sagaState(), 100) }

// started is sagaFSM with failover 1 (orders n1 → n2, term 2) at step DECIDED.
func started(t *testing.T) *FSM {
	f := sagaFSM(t)
	mustApply(t, f, startCmd(ordersStart()))
	return f
}

// atStep is started, advanced (term 2) up to step s.
func atStep(s regentv1.FailoverStep) func(*testing.T) *FSM {
	return func(t *testing.T) *FSM {
		f := started(t)
		if s == stepAborted {
			mustApply(t, f, step(1, stepAborted, 2))
			return f
		}
		for cur := stepDecided; cur != s; {
			cur = nextStep[cur]
			mustApply(t, f, step(1, cur, 2))
		}
		return f
	}
}

func eventOf(t *testing.T, f *FSM, id uint64) *regentv1.FailoverEvent {
	t.Helper()
	st, _ := f.State()
	for _, ev := range st.FailoverEvents {
		if ev.Id == id {
			return ev
		}
	}
	t.Fatalf("failover %d not found", id)
	return nil
}

func TestFailoverCommandsRejectChangeNothing(t *testing.T) {
	with := func(mut func(*regentv1.StartFailoverCommand)) entry {
		c := ordersStart()
		mut(c)
		return startCmd(c)
	}
	tests := []struct {
		name  string
		setup func(*testing.T) *FSM
		cmd   entry
		want  error
		msg   string
	}{
		{"pause without cluster", sagaFSM, pauseCmd(" ", true, "x"), spec.ErrInvalid, "cluster: is required"},
		{"pause unknown cluster", sagaFSM, pauseCmd("nope", true, "x"), ErrNotFound, `cluster "nope": not found`},
		{"resume unknown cluster", sagaFSM, pauseCmd("nope", false, ""), ErrNotFound, `cluster "nope": not found`},
		{"refusal without cluster", sagaFSM, refusalCmd("", "x"), spec.ErrInvalid, "cluster: is required"},

		{"start without cluster", sagaFSM, with(func(c *regentv1.StartFailoverCommand) { c.Cluster = "" }), spec.ErrInvalid, "cluster: is required"},
		{"start without from_node", sagaFSM, with(func(c *regentv1.StartFailoverCommand) { c.FromNode = "" }), spec.ErrInvalid, "from_node: is required"},
		{"start without to_node", sagaFSM, with(func(c *regentv1.StartFailoverCommand) { c.ToNode = " " }), spec.ErrInvalid, "to_node: is required"},
		{"start without term", sagaFSM, with(func(c *regentv1.StartFailoverCommand) { c.Term = 0 }), spec.ErrInvalid, "term: is required"},
		{"start with negative loss", sagaFSM, with(func(c *regentv1.StartFailoverCommand) { c.EstimatedLossBytes = -1 }), spec.ErrInvalid,
			"estimated_loss_bytes: -1 must not be negative"},
		{"start unknown cluster", sagaFSM, with(func(c *regentv1.StartFailoverCommand) { c.Cluster = "nope" }), ErrNotFound, `cluster "nope": not found`},
		{"start to a node outside the cluster", sagaFSM, with(func(c *regentv1.StartFailoverCommand) { c.ToNode = "b1" }), spec.ErrInvalid,
			`to_node: "b1" is not a node of cluster "orders" (nodes: n1, n2, n3, n4)`},
		{"start to the primary itself", sagaFSM, with(func(c *regentv1.StartFailoverCommand) { c.ToNode = "n1" }), spec.ErrInvalid,
			`to_node: "n1" is the node being failed over from`},
		{"start from a node that is not primary", sagaFSM, with(func(c *regentv1.StartFailoverCommand) { c.FromNode = "n3" }), ErrConflict,
			`cluster "orders": failover from "n3", but the current primary is "n1"`},
		{"start while one runs", atStep(stepFenced), startCmd(ordersStart()), ErrConflict,
			`cluster "orders": failover 1 of orders is still at step fenced`},

		{"advance without event id", started, advanceCmd(&regentv1.AdvanceFailoverCommand{Step: stepFenced, Term: 2, FenceMethod: "sql"}),
			spec.ErrInvalid, "event_id: is required"},
		{"advance without term", started, advanceCmd(&regentv1.AdvanceFailoverCommand{EventId: 1, Step: stepFenced, FenceMethod: "sql"}),
			spec.ErrInvalid, "term: is required"},
		{"advance to unspecified", started, step(1, regentv1.FailoverStep_FAILOVER_STEP_UNSPECIFIED, 2), spec.ErrInvalid,
			"step: step 0 is not a step a saga can advance to"},
		{"advance back to decided", atStep(stepFenced), step(1, stepDecided, 2), ErrConflict, "the next step is promoted, not decided"},
		{"advance to an unknown step", started, step(1, 42, 2), spec.ErrInvalid, "step: step 42 is not a step"},
		{"advance with negative loss", started, advanceCmd(&regentv1.AdvanceFailoverCommand{EventId: 1, Step: stepFenced, Term: 2,
			FenceMethod: "sql", DataLossBytes: proto.Int64(-5)}), spec.ErrInvalid, "data_loss_bytes: -5 must not be negative"},
		{"advance unknown event", started, step(9, stepFenced, 2), ErrNotFound, "failover 9: not found"},
		{"advance with an older term", atStep(stepFenced), step(1, stepPromoted, 1), ErrConflict,
			"failover 1 of orders: term 1 is older than the saga's owner 2"},
		{"older term even for the current step", atStep(stepFenced), step(1, stepFenced, 1), ErrConflict, "term 1 is older"},
		{"skip a step", started, step(1, stepPromoted, 2), ErrConflict,
			"failover 1 of orders is at step decided; the next step is fenced, not promoted"},
		{"go back", atStep(stepRepointed), step(1, stepPromoted, 2), ErrConflict, "the next step is published, not promoted"},
		{"abort after promotion", atStep(stepPromoted), step(1, stepAborted, 2), ErrConflict,
			"failover 1 of orders is at step promoted: after promotion a failover cannot be aborted, only finished"},
		{"advance a completed saga", atStep(stepCompleted), step(1, stepAborted, 2), ErrConflict,
			"failover 1 of orders is already completed; it cannot move to aborted"},
		{"advance an aborted saga", atStep(stepAborted), step(1, stepFenced, 2), ErrConflict, "is already aborted"},
		{"current step with a newer term", atStep(stepFenced), step(1, stepFenced, 3), ErrConflict,
			"is at step fenced; the next step is promoted, not fenced"},
		{"fenced without a method", started, advanceCmd(&regentv1.AdvanceFailoverCommand{EventId: 1, Step: stepFenced, Term: 2}), spec.ErrInvalid,
			"fence_method: is required for step fenced"},
		{"aborted without a reason", started, advanceCmd(&regentv1.AdvanceFailoverCommand{EventId: 1, Step: stepAborted, Term: 2}), spec.ErrInvalid,
			"abort_reason: is required for step aborted"},

		{"delete a cluster whose failover runs", atStep(stepPromoted), deleteCmd("orders"), ErrConflict,
			`cluster "orders": failover 1 is still at step promoted`},
		{"drop the failover's target from the spec", atStep(stepFenced), applyCmd(func() *regentv1.ClusterSpec {
			s := testSpec("orders", "n1", "n1", "n3")
			return s
		}()), ErrConflict, `cluster "orders": the spec drops node "n2", which takes part in failover 1 (at step fenced)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := tt.setup(t)
			before, idx := stateBytes(t, f), f.AppliedIndex()
			res := applyNext(t, f, tt.cmd)
			if !errors.Is(res.Err, tt.want) {
				t.Fatalf("Err = %v, want %v", res.Err, tt.want)
			}
			if !strings.Contains(res.Err.Error(), tt.msg) {
				t.Errorf("Err = %q, want it to contain %q", res.Err, tt.msg)
			}
			if !bytes.Equal(before, stateBytes(t, f)) {
				t.Fatal("a rejected command changed the state")
			}
			if res.Created || res.Cluster != nil || res.Event != nil || len(res.Warnings) > 0 {
				t.Errorf("rejected result carries output: %+v", res)
			}
			if evs, _, _ := f.ChangesSince(idx); len(evs) != 0 {
				t.Errorf("a rejected command emitted %s", describe(evs))
			}
		})
	}
}

func TestSetPaused(t *testing.T) {
	f := sagaFSM(t)
	at := t0.Add(time.Hour)
	e := pauseCmd("orders", true, "maintenance until 14:00")
	e.at = at
	if got := applyWatched(t, f, e); got != "101:cluster:orders 101:audit:1" {
		t.Errorf("events = %q", got)
	}
	c, _ := f.Cluster("orders")
	if !c.Paused || c.PauseReason != "maintenance until 14:00" {
		t.Fatalf("paused=%v reason=%q", c.Paused, c.PauseReason)
	}
	st, _ := f.State()
	want := &regentv1.AuditRecord{Id: 1, At: timestamppb.New(at), Actor: "alice", Action: "cluster.pause", Target: "orders",
		Detail: "maintenance until 14:00"}
	if len(st.Audit) != 1 || !proto.Equal(st.Audit[0], want) {
		t.Fatalf("audit = %v, want %v", st.Audit, want)
	}

	// Pausing again with another reason updates the reason.
	res := mustApply(t, f, pauseCmd("orders", true, "db upgrade"))
	if c, _ := f.Cluster("orders"); c.PauseReason != "db upgrade" || !proto.Equal(res.Cluster, c) {
		t.Fatalf("reason = %q; result cluster %v", c.PauseReason, res.Cluster)
	}
	// The same request again changes nothing, but is an operator action: audited.
	idx := f.AppliedIndex()
	mustApply(t, f, pauseCmd("orders", true, "db upgrade"))
	if evs, _, _ := f.ChangesSince(idx); describe(evs) != fmt.Sprintf("%d:audit:3", idx+1) {
		t.Errorf("repeated pause emitted %s", describe(evs))
	}

	// Resume clears the reason; the reason given is audited.
	e = pauseCmd("orders", false, "upgrade done")
	e.actor = "bob"
	next := f.AppliedIndex() + 1
	if got := applyWatched(t, f, e); got != fmt.Sprintf("%d:cluster:orders %d:audit:4", next, next) {
		t.Errorf("events = %q", got)
	}
	c, _ = f.Cluster("orders")
	if c.Paused || c.PauseReason != "" {
		t.Fatalf("after resume: paused=%v reason=%q", c.Paused, c.PauseReason)
	}
	st, _ = f.State()
	if last := st.Audit[len(st.Audit)-1]; last.Action != "cluster.resume" || last.Actor != "bob" || last.Detail != "upgrade done" {
		t.Fatalf("resume audit = %v", last)
	}
	// Nothing else of the cluster moved.
	c.Paused, c.PauseReason = false, ""
	orig := sagaState().Clusters[1]
	if !proto.Equal(c, orig) {
		t.Fatalf("pause/resume changed other fields:\n got %v\nwant %v", c, orig)
	}
}

func TestRecordRefusal(t *testing.T) {
	tests := []struct {
		name       string
		reason     string
		cluster    string
		wantReason string
		wantAt     time.Time // zero: unset
		events     string
	}{
		{"new reason", "paused: maintenance", "orders", "paused: maintenance", t0.Add(time.Hour), "101:cluster:orders"},
		{"same reason is a no-op", "no candidate", "orders", "no candidate", t0, ""},
		{"empty reason clears both", "", "orders", "", time.Time{}, "101:cluster:orders"},
		{"deleted cluster is skipped", "x", "gone", "no candidate", t0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := sagaFSM(t)
			before := stateBytes(t, f)
			e := refusalCmd(tt.cluster, tt.reason)
			e.at = t0.Add(time.Hour)
			if got := applyWatched(t, f, e); got != tt.events {
				t.Errorf("events = %q, want %q", got, tt.events)
			}
			c, _ := f.Cluster("orders")
			if c.Refusal != tt.wantReason {
				t.Errorf("refusal = %q, want %q", c.Refusal, tt.wantReason)
			}
			if tt.wantAt.IsZero() != (c.RefusalAt == nil) || (c.RefusalAt != nil && !c.RefusalAt.AsTime().Equal(tt.wantAt)) {
				t.Errorf("refusal_at = %v, want %v", c.RefusalAt, tt.wantAt)
			}
			if tt.events == "" && !bytes.Equal(before, stateBytes(t, f)) {
				t.Error("a no-op changed the state")
			}
			if st, _ := f.State(); len(st.Audit) != 0 {
				t.Errorf("refusals are not audited: %v", st.Audit)
			}
		})
	}
}

func TestStartFailover(t *testing.T) {
	tests := []struct {
		name      string
		cmd       *regentv1.StartFailoverCommand
		actor     string
		wantAudit string // detail; "" = none
	}{
		{"automatic", ordersStart(), "regent/w1", ""},
		{"manual and forced", &regentv1.StartFailoverCommand{Cluster: "orders", FromNode: "n1", ToNode: "n3", TriggerReason: "manual failover by alice: drill",
			Term: 7, Manual: true, Force: true, OldPrimaryLsn: 5000, EstimatedLossBytes: 1000}, "alice",
			"failover 1: n1 (r0) → n3 (r2), forced past the lag gate; manual failover by alice: drill"},
		{"manual, to a node of the same region", &regentv1.StartFailoverCommand{Cluster: "orders", FromNode: "n1", ToNode: "n4", Term: 3, Manual: true},
			"alice", "failover 1: n1 (r0) → n4 (r0)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := sagaFSM(t)
			at := t0.Add(time.Hour)
			e := startCmd(tt.cmd)
			e.at, e.actor = at, tt.actor
			res := applyNext(t, f, e)
			if res.Err != nil || !res.Created {
				t.Fatalf("result = %+v", res)
			}
			c, _ := f.Cluster("orders")
			loss := tt.cmd.EstimatedLossBytes
			want := &regentv1.FailoverEvent{Id: 1, Cluster: "orders", FromNode: "n1", ToNode: tt.cmd.ToNode, FromRegion: "r0",
				ToRegion: findNodeSpec(c, tt.cmd.ToNode).Region, TriggerReason: tt.cmd.TriggerReason, StartedAt: timestamppb.New(at),
				Step: stepDecided, Steps: []*regentv1.StepTime{{Step: stepDecided, At: timestamppb.New(at)}}, Term: tt.cmd.Term,
				Manual: tt.cmd.Manual, Force: tt.cmd.Force, OldPrimaryLsn: tt.cmd.OldPrimaryLsn, DataLossBytes: &loss}
			if got := eventOf(t, f, 1); !proto.Equal(got, want) {
				t.Fatalf("event:\n got %v\nwant %v", got, want)
			}
			if !proto.Equal(res.Event, want) {
				t.Errorf("Result.Event = %v", res.Event)
			}
			st, _ := f.State()
			if st.NextEventId != 2 {
				t.Errorf("next event id = %d, want 2", st.NextEventId)
			}
			// The standing refusal is answered; nothing else of the cluster changes.
			if c.Refusal != "" || c.RefusalAt != nil || c.Primary != "n1" {
				t.Errorf("cluster after start: refusal %q at %v, primary %s", c.Refusal, c.RefusalAt, c.Primary)
			}
			evs, _, _ := f.ChangesSince(100)
			wantEvents := "101:failover_event:1 101:cluster:orders"
			if tt.wantAudit != "" {
				wantEvents += " 101:audit:1"
				a := st.Audit[0]
				if a.Action != "cluster.failover" || a.Target != "orders" || a.Actor != tt.actor || a.Detail != tt.wantAudit {
					t.Errorf("audit = %v, want detail %q", a, tt.wantAudit)
				}
			} else if len(st.Audit) != 0 {
				t.Errorf("automatic failovers are not audited: %v", st.Audit)
			}
			if describe(evs) != wantEvents {
				t.Errorf("events = %s, want %s", describe(evs), wantEvents)
			}
			if err := checkState(st); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestStartFailoverAfterTheLastOneEnded(t *testing.T) {
	for _, end := range []regentv1.FailoverStep{stepCompleted, stepAborted} {
		t.Run(StepName(end), func(t *testing.T) {
			f := atStep(end)(t)
			c, _ := f.Cluster("orders")
			res := mustApply(t, f, startCmd(&regentv1.StartFailoverCommand{Cluster: "orders", FromNode: c.Primary, ToNode: "n3", Term: 4}))
			if res.Event.GetId() != 2 || res.Event.GetFromNode() != c.Primary {
				t.Fatalf("second event = %v", res.Event)
			}
			// Another cluster's open failover does not block this one, nor the reverse.
			mustApply(t, f, applyCmd(testSpec("billing", "b1", "b1", "b2")))
			mustApply(t, f, startCmd(&regentv1.StartFailoverCommand{Cluster: "billing", FromNode: "b1", ToNode: "b2", Term: 4}))
		})
	}
}

// TestAdvanceTransitions tries every step from every step with the owner's term.
func TestAdvanceTransitions(t *testing.T) {
	steps := []regentv1.FailoverStep{stepDecided, stepFenced, stepPromoted, stepRepointed, stepPublished, stepCompleted, stepAborted}
	// allowed[from] lists the steps a saga may move to; repeating from is a no-op.
	allowed := map[regentv1.FailoverStep][]regentv1.FailoverStep{
		stepDecided:   {stepFenced, stepAborted},
		stepFenced:    {stepPromoted, stepAborted},
		stepPromoted:  {stepRepointed},
		stepRepointed: {stepPublished},
		stepPublished: {stepCompleted},
	}
	for _, from := range steps {
		for _, to := range steps {
			t.Run(StepName(from)+"→"+StepName(to), func(t *testing.T) {
				f := atStep(from)(t)
				before, idx := stateBytes(t, f), f.AppliedIndex()
				res := applyNext(t, f, step(1, to, 2))
				evs, _, _ := f.ChangesSince(idx)
				switch {
				case to == from:
					if res.Err != nil || len(evs) != 0 || !bytes.Equal(before, stateBytes(t, f)) {
						t.Fatalf("repeating the current step: err %v, events %s; want an idempotent no-op", res.Err, describe(evs))
					}
					if res.Event.GetStep() != from {
						t.Errorf("Result.Event = %v", res.Event)
					}
				case containsStep(allowed[from], to):
					if res.Err != nil {
						t.Fatalf("Err = %v, want the step applied", res.Err)
					}
					ev := eventOf(t, f, 1)
					if ev.Step != to || ev.Steps[len(ev.Steps)-1].Step != to || res.Event.GetStep() != to {
						t.Fatalf("event = %v", ev)
					}
				default:
					if !errors.Is(res.Err, ErrConflict) {
						t.Fatalf("Err = %v, want ErrConflict", res.Err)
					}
				}
			})
		}
	}
}

func containsStep(xs []regentv1.FailoverStep, s regentv1.FailoverStep) bool {
	for _, x := range xs {
		if x == s {
			return true
		}
	}
	return false
}

func TestAdvanceTermOwnership(t *testing.T) {
	f := atStep(stepFenced)(t)
	// A new leader (term 5) takes the saga over with its next step.
	res := mustApply(t, f, step(1, stepPromoted, 5))
	if res.Event.GetTerm() != 5 || eventOf(t, f, 1).Term != 5 {
		t.Fatalf("term after takeover = %d", eventOf(t, f, 1).Term)
	}
	// The old leader's late commit is refused and changes nothing.
	before := stateBytes(t, f)
	res = applyNext(t, f, step(1, stepRepointed, 2))
	if !errors.Is(res.Err, ErrConflict) || !strings.Contains(res.Err.Error(), "term 2 is older than the saga's owner 5") {
		t.Fatalf("stale commit: %v", res.Err)
	}
	if !bytes.Equal(before, stateBytes(t, f)) {
		t.Fatal("a stale commit changed the state")
	}
	// The new owner repeating its commit is a no-op.
	if res := applyNext(t, f, step(1, stepPromoted, 5)); res.Err != nil || !bytes.Equal(before, stateBytes(t, f)) {
		t.Fatalf("repeat: %v", res.Err)
	}
}

// TestSagaEffects walks a failover through every step and checks what each one records.
func TestSagaEffects(t *testing.T) {
	f := started(t)
	ats := map[regentv1.FailoverStep]time.Time{stepDecided: t0}
	adv := func(c *regentv1.AdvanceFailoverCommand, at time.Time) string {
		t.Helper()
		ats[c.Step] = at
		e := advanceCmd(c)
		e.at = at
		return applyWatched(t, f, e)
	}
	tick := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Second) }

	// fenced: the method and a note.
	if got := adv(&regentv1.AdvanceFailoverCommand{EventId: 1, Step: stepFenced, Term: 2, FenceMethod: "command",
		Note: "sql: connection refused; command: exit 0"}, tick(1)); got != "102:failover_event:1" {
		t.Errorf("fenced events = %q", got)
	}
	ev := eventOf(t, f, 1)
	if ev.FenceMethod != "command" || len(ev.Notes) != 1 || ev.Notes[0] != "sql: connection refused; command: exit 0" {
		t.Fatalf("after fenced: %v", ev)
	}
	chBefore, _ := f.State()
	epochBefore := chBefore.Clusters[0].LeaseEpoch

	// promoted: LSN and timeline, primary and roles, channels swapped in place.
	got := adv(&regentv1.AdvanceFailoverCommand{EventId: 1, Step: stepPromoted, Term: 2, PromotedLsn: 4800, PromotedTimeline: 2}, tick(2))
	if got != "103:failover_event:1 103:channel:4- 103:channel:1 103:channel:2 103:cluster:orders" {
		t.Errorf("promoted events = %q", got)
	}
	ev = eventOf(t, f, 1)
	if ev.PromotedLsn != 4800 || ev.PromotedTimeline != 2 {
		t.Errorf("promoted lsn/timeline = %d/%d", ev.PromotedLsn, ev.PromotedTimeline)
	}
	c, _ := f.Cluster("orders")
	roles := map[string]regentv1.NodeRole{}
	for _, n := range c.NodeStatus {
		roles[n.Name] = n.Role
	}
	if c.Primary != "n2" || roles["n1"] != regentv1.NodeRole_NODE_ROLE_FENCED || roles["n2"] != regentv1.NodeRole_NODE_ROLE_PRIMARY ||
		roles["n3"] != regentv1.NodeRole_NODE_ROLE_REPLICA {
		t.Errorf("after promotion: primary %s, roles %v", c.Primary, roles)
	}
	if c.LeaseEpoch != epochBefore+1 {
		t.Errorf("lease epoch %d after a promotion, want %d", c.LeaseEpoch, epochBefore+1)
	}
	st, _ := f.State()
	swapped := func(old *regentv1.ReplicationChannel, p, s string, status regentv1.ChannelStatus) *regentv1.ReplicationChannel {
		ch := proto.Clone(old).(*regentv1.ReplicationChannel)
		ch.PrimaryRegion, ch.SecondaryRegion, ch.Status = p, s, status
		return ch
	}
	wantCh := []*regentv1.ReplicationChannel{
		swapped(chBefore.Channels[0], "r1", "r0", failed), // r0→r1 reversed, pointing at the old primary's region
		swapped(chBefore.Channels[1], "r1", "r2", active), // r0→r2 now from r1, figures kept
		chBefore.Channels[2],                              // billing untouched
		// 4 (r0→r0) would also become r1→r0: merged into 1.
	}
	if len(st.Channels) != len(wantCh) {
		t.Fatalf("channels = %v", st.Channels)
	}
	for i := range wantCh {
		if !proto.Equal(st.Channels[i], wantCh[i]) {
			t.Errorf("channels[%d] = %v, want %v", i, st.Channels[i], wantCh[i])
		}
	}
	if err := checkState(st); err != nil {
		t.Fatal(err)
	}

	// repointed: a note only.
	if got := adv(&regentv1.AdvanceFailoverCommand{EventId: 1, Step: stepRepointed, Term: 2, Note: "n3 unreachable: not repointed"}, tick(3)); got != "104:failover_event:1" {
		t.Errorf("repointed events = %q", got)
	}
	// published: the outcome and the DNS token.
	if got := adv(&regentv1.AdvanceFailoverCommand{EventId: 1, Step: stepPublished, Term: 2, Published: true}, tick(4)); got != "105:failover_event:1 105:cluster:orders" {
		t.Errorf("published events = %q", got)
	}
	if c, _ := f.Cluster("orders"); c.DnsToken != "regent term=2 event=1" || c.DnsToken != DNSToken(2, 1) {
		t.Errorf("dns token = %q", c.DnsToken)
	}
	// completed: completed_at, and an exact data-loss figure when carried.
	if got := adv(&regentv1.AdvanceFailoverCommand{EventId: 1, Step: stepCompleted, Term: 2, DataLossBytes: proto.Int64(0), DataLossExact: true}, tick(5)); got != "106:failover_event:1" {
		t.Errorf("completed events = %q", got)
	}
	ev = eventOf(t, f, 1)
	if !ev.CompletedAt.AsTime().Equal(tick(5)) || ev.GetDataLossBytes() != 0 || ev.DataLossBytes == nil || !ev.DataLossExact || !ev.Published {
		t.Errorf("after completed: %v", ev)
	}
	wantSteps := []regentv1.FailoverStep{stepDecided, stepFenced, stepPromoted, stepRepointed, stepPublished, stepCompleted}
	if len(ev.Steps) != len(wantSteps) {
		t.Fatalf("steps = %v", ev.Steps)
	}
	for i, s := range wantSteps {
		if ev.Steps[i].Step != s || !ev.Steps[i].At.AsTime().Equal(ats[s]) {
			t.Errorf("steps[%d] = %v, want %s at %v", i, ev.Steps[i], StepName(s), ats[s])
		}
	}
	if strings.Join(ev.Notes, "|") != "sql: connection refused; command: exit 0|n3 unreachable: not repointed" {
		t.Errorf("notes = %q", ev.Notes)
	}
	if ev.AbortReason != "" || ev.PublishError != "" {
		t.Errorf("unexpected fields: %v", ev)
	}
	if st, _ := f.State(); len(st.Audit) != 0 {
		t.Errorf("saga steps are not audited: %v", st.Audit)
	}
}

func TestAdvanceAbortAndPublishFailure(t *testing.T) {
	f := atStep(stepFenced)(t)
	mustApply(t, f, advanceCmd(&regentv1.AdvanceFailoverCommand{EventId: 1, Step: stepAborted, Term: 2, AbortReason: "pre_promote vetoed"}))
	ev := eventOf(t, f, 1)
	if ev.Step != stepAborted || ev.AbortReason != "pre_promote vetoed" || ev.CompletedAt != nil {
		t.Fatalf("aborted event = %v", ev)
	}
	if c, _ := f.Cluster("orders"); c.Primary != "n1" {
		t.Fatalf("an abort before promotion changed the primary to %s", c.Primary)
	}

	g := atStep(stepRepointed)(t)
	mustApply(t, g, advanceCmd(&regentv1.AdvanceFailoverCommand{EventId: 1, Step: stepPublished, Term: 2, PublishError: "REFUSED: prerequisite failed"}))
	ev = eventOf(t, g, 1)
	if ev.Published || ev.PublishError != "REFUSED: prerequisite failed" {
		t.Fatalf("failed publish = %v", ev)
	}
	if c, _ := g.Cluster("orders"); c.DnsToken != "regent term=1 event=0" {
		t.Fatalf("a failed publish changed the dns token to %q", c.DnsToken)
	}
}

func TestAdvanceNotesAreBounded(t *testing.T) {
	// A saga has too few steps to reach the bound with notes of its own: start from a state
	// whose event already holds MaxEventNotes notes.
	st, _ := started(t).State()
	for i := range MaxEventNotes {
		st.FailoverEvents[0].Notes = append(st.FailoverEvents[0].Notes, fmt.Sprintf("old %d", i))
	}
	f := withState(t, st, 200)
	mustApply(t, f, advanceCmd(&regentv1.AdvanceFailoverCommand{EventId: 1, Step: stepFenced, Term: 2, FenceMethod: "sql", Note: "newest"}))
	ev := eventOf(t, f, 1)
	if len(ev.Notes) != MaxEventNotes || ev.Notes[0] != "old 1" || ev.Notes[MaxEventNotes-1] != "newest" {
		t.Fatalf("notes: %d, first %q, last %q", len(ev.Notes), ev.Notes[0], ev.Notes[len(ev.Notes)-1])
	}
}

// TestSwapChannels checks the channel swap of a promotion from r0 to r1 on several channel
// sets (id: primary→secondary status).
func TestSwapChannels(t *testing.T) {
	ch := func(id uint64, cluster, p, s string) *regentv1.ReplicationChannel {
		return &regentv1.ReplicationChannel{Id: id, Cluster: cluster, PrimaryRegion: p, SecondaryRegion: s, Status: active}
	}
	show := func(chs []*regentv1.ReplicationChannel) string {
		var out []string
		for _, c := range chs {
			out = append(out, fmt.Sprintf("%d:%s:%s→%s:%s", c.Id, c.Cluster, c.PrimaryRegion, c.SecondaryRegion,
				strings.ToLower(strings.TrimPrefix(c.Status.String(), "CHANNEL_STATUS_"))))
		}
		return strings.Join(out, " ")
	}
	tests := []struct {
		name         string
		from, to     string
		channels     []*regentv1.ReplicationChannel
		want         string
		changed, del string // ids
	}{
		{"two regions: the channel reverses", "r0", "r1",
			[]*regentv1.ReplicationChannel{ch(1, "o", "r0", "r1")},
			"1:o:r1→r0:failed", "1", ""},
		{"three regions", "r0", "r1",
			[]*regentv1.ReplicationChannel{ch(1, "o", "r0", "r2"), ch(2, "o", "r0", "r1")},
			"1:o:r1→r2:active 2:o:r1→r0:failed", "1 2", ""},
		{"the old primary's region's standbys merge into the reversed channel", "r0", "r1",
			[]*regentv1.ReplicationChannel{ch(1, "o", "r0", "r0"), ch(2, "o", "r0", "r1")},
			"2:o:r1→r0:failed", "2", "1"},
		{"without a reversed channel, r0→r0 becomes r1→r0", "r0", "r1",
			[]*regentv1.ReplicationChannel{ch(1, "o", "r0", "r0"), ch(2, "o", "r0", "r2")},
			"1:o:r1→r0:failed 2:o:r1→r2:active", "1 2", ""},
		{"a leftover channel with the new key gives way", "r0", "r1",
			[]*regentv1.ReplicationChannel{ch(1, "o", "r1", "r2"), ch(2, "o", "r0", "r2"), ch(3, "o", "r0", "r1")},
			"2:o:r1→r2:active 3:o:r1→r0:failed", "2 3", "1"},
		{"leftovers with other keys and other clusters stay", "r0", "r1",
			[]*regentv1.ReplicationChannel{ch(1, "x", "r0", "r1"), ch(2, "o", "r2", "r0"), ch(3, "o", "r0", "r1")},
			"1:x:r0→r1:active 2:o:r2→r0:active 3:o:r1→r0:failed", "3", ""},
		{"a failover within one region moves no channel", "r0", "r0",
			[]*regentv1.ReplicationChannel{ch(1, "o", "r0", "r0"), ch(2, "o", "r0", "r1")},
			"1:o:r0→r0:failed 2:o:r0→r1:active", "1", ""},
		{"no channels", "r0", "r1", nil, "", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &regentv1.State{Channels: tt.channels}
			changed, deleted := swapChannels(s, &regentv1.FailoverEvent{Cluster: "o", FromRegion: tt.from, ToRegion: tt.to})
			if got := show(s.Channels); got != tt.want {
				t.Errorf("channels = %s, want %s", got, tt.want)
			}
			ids := func(chs []*regentv1.ReplicationChannel) string {
				var out []string
				for _, c := range chs {
					out = append(out, fmt.Sprint(c.Id))
				}
				return strings.Join(out, " ")
			}
			if ids(changed) != tt.changed || ids(deleted) != tt.del {
				t.Errorf("changed %q deleted %q, want %q %q", ids(changed), ids(deleted), tt.changed, tt.del)
			}
			s.NextChannelId = 100
			if err := checkState(s); err != nil {
				t.Errorf("swapped channels break the snapshot checks: %v", err)
			}
		})
	}
}

func TestDNSTokenAndStepName(t *testing.T) {
	if got := DNSToken(12, 345); got != "regent term=12 event=345" {
		t.Errorf("DNSToken = %q", got)
	}
	for s, want := range map[regentv1.FailoverStep]string{stepDecided: "decided", stepPublished: "published", stepAborted: "aborted",
		regentv1.FailoverStep_FAILOVER_STEP_UNSPECIFIED: "step 0", 42: "step 42"} {
		if got := StepName(s); got != want {
			t.Errorf("StepName(%d) = %q, want %q", s, got, want)
		}
	}
}

// TestFailoverInvariantsProperty replays generated logs and checks after every entry that
// the state stays restorable, that a cluster never has two open failovers, that its primary
// is one of its nodes, and that a saga's steps only ever went forward.
func TestFailoverInvariantsProperty(t *testing.T) {
	order := map[regentv1.FailoverStep]int{stepDecided: 1, stepFenced: 2, stepPromoted: 3, stepRepointed: 4, stepPublished: 5,
		stepCompleted: 6, stepAborted: 6}
	for seed := uint64(1); seed <= 10; seed++ {
		f := New()
		for i, e := range genLog(rand.New(rand.NewPCG(seed, 1234)), 400) {
			applyNext(t, f, e)
			st, _ := f.State()
			if err := checkState(st); err != nil {
				t.Fatalf("seed %d entry %d: %v", seed, i, err)
			}
			open := map[string]uint64{}
			for _, ev := range st.FailoverEvents {
				if isOpen(ev) {
					if other, dup := open[ev.Cluster]; dup {
						t.Fatalf("seed %d entry %d: cluster %s has open failovers %d and %d", seed, i, ev.Cluster, other, ev.Id)
					}
					open[ev.Cluster] = ev.Id
				}
				for j := 1; j < len(ev.Steps); j++ {
					if order[ev.Steps[j].Step] != order[ev.Steps[j-1].Step]+1 && ev.Steps[j].Step != stepAborted {
						t.Fatalf("seed %d entry %d: failover %d went %v", seed, i, ev.Id, ev.Steps)
					}
				}
				if ev.Steps[len(ev.Steps)-1].Step != ev.Step {
					t.Fatalf("seed %d entry %d: failover %d is at %s but its last step is %v", seed, i, ev.Id, StepName(ev.Step), ev.Steps)
				}
			}
			for _, c := range st.Clusters {
				if findNodeSpec(c, c.Primary) == nil {
					t.Fatalf("seed %d entry %d: cluster %s's primary %q is not one of its nodes", seed, i, c.Name, c.Primary)
				}
			}
		}
	}
}
