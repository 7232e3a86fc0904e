package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
	"github.com/regentdb/regent/spec"
)

const (
	rejoinPending    = regentv1.RejoinStatus_REJOIN_STATUS_PENDING
	rejoinRebuilding = regentv1.RejoinStatus_REJOIN_STATUS_REBUILDING
	rejoinCaughtUp   = regentv1.RejoinStatus_REJOIN_STATUS_CAUGHT_UP
	rejoinFailed     = regentv1.RejoinStatus_REJOIN_STATUS_FAILED
)

func rejoinCmd(c *regentv1.RecordRejoinCommand) entry {
	return entry{typ: regentv1.CommandType_COMMAND_TYPE_RECORD_REJOIN, payload: c, actor: "regent/w1"}
}

// rejoinOf is a RECORD_REJOIN of failover 1 with term 2 and the given status.
func rejoinOf(s regentv1.RejoinStatus) *regentv1.RecordRejoinCommand {
	return &regentv1.RecordRejoinCommand{EventId: 1, Term: 2, Rejoin: &regentv1.Rejoin{Status: s}}
}

func TestRecordRejoinRejectChangesNothing(t *testing.T) {
	with := func(mut func(*regentv1.RecordRejoinCommand)) entry {
		c := rejoinOf(rejoinRebuilding)
		mut(c)
		return rejoinCmd(c)
	}
	completed := atStep(stepCompleted)
	tests := []struct {
		name  string
		setup func(*testing.T) *FSM
		cmd   entry
		want  error
		msg   string
	}{
		{"no event id", completed, with(func(c *regentv1.RecordRejoinCommand) { c.EventId = 0 }), spec.ErrInvalid, "event_id: is required"},
		{"no term", completed, with(func(c *regentv1.RecordRejoinCommand) { c.Term = 0 }), spec.ErrInvalid, "term: is required"},
		{"no rejoin", completed, with(func(c *regentv1.RecordRejoinCommand) { c.Rejoin = nil }), spec.ErrInvalid, "rejoin: is required"},
		{"unspecified status", completed, with(func(c *regentv1.RecordRejoinCommand) { c.Rejoin.Status = 0 }), spec.ErrInvalid,
			"rejoin.status: 0 is not a rejoin status"},
		{"unknown status", completed, with(func(c *regentv1.RecordRejoinCommand) { c.Rejoin.Status = 42 }), spec.ErrInvalid,
			"rejoin.status: 42 is not a rejoin status"},
		{"negative loss", completed, with(func(c *regentv1.RecordRejoinCommand) { c.DataLossBytes = proto.Int64(-1) }), spec.ErrInvalid,
			"data_loss_bytes: -1 must not be negative"},
		{"negative lost transactions", completed, with(func(c *regentv1.RecordRejoinCommand) { c.LostTransactions = proto.Int64(-1) }),
			spec.ErrInvalid, "lost_transactions: -1 must not be negative"},
		{"negative rate", completed, with(func(c *regentv1.RecordRejoinCommand) { c.Rejoin.RateBytesPerSecond = -3 }), spec.ErrInvalid,
			"rejoin.rate_bytes_per_second: -3 must be a finite number"},
		{"NaN eta", completed, with(func(c *regentv1.RecordRejoinCommand) { c.Rejoin.EtaSeconds = math.NaN() }), spec.ErrInvalid,
			"rejoin.eta_seconds: NaN must be a finite number"},
		{"bad started_at", completed, with(func(c *regentv1.RecordRejoinCommand) { c.Rejoin.StartedAt = &timestamppb.Timestamp{Nanos: -1} }),
			spec.ErrInvalid, "rejoin.started_at"},
		{"unknown event", completed, with(func(c *regentv1.RecordRejoinCommand) { c.EventId = 9 }), ErrNotFound, "failover 9: not found"},
		{"open event", atStep(stepPublished), with(func(*regentv1.RecordRejoinCommand) {}), ErrConflict,
			"failover 1 of orders is at step published: an old primary rejoins only after its failover completed"},
		{"aborted event", atStep(stepAborted), with(func(*regentv1.RecordRejoinCommand) {}), ErrConflict, "is at step aborted"},
		{"older term", completed, with(func(c *regentv1.RecordRejoinCommand) { c.Term = 1 }), ErrConflict,
			"failover 1 of orders: term 1 is older than the event's 2"},
		{"another node", completed, with(func(c *regentv1.RecordRejoinCommand) { c.Rejoin.Node = "n3" }), spec.ErrInvalid,
			`rejoin.node: "n3" is not failover 1's old primary "n1"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { assertRejected(t, tt.setup(t), tt.cmd, tt.want, tt.msg) })
	}
}

// assertRejected applies e, which must fail with want and a message containing msg, and
// change nothing: no state, no result output, no watch event.
func assertRejected(t *testing.T, f *FSM, e entry, want error, msg string) {
	t.Helper()
	before, idx := stateBytes(t, f), f.AppliedIndex()
	res := applyNext(t, f, e)
	if !errors.Is(res.Err, want) {
		t.Fatalf("Err = %v, want %v", res.Err, want)
	}
	if !strings.Contains(res.Err.Error(), msg) {
		t.Errorf("Err = %q, want it to contain %q", res.Err, msg)
	}
	if !bytes.Equal(before, stateBytes(t, f)) {
		t.Fatal("a rejected command changed the state")
	}
	if res.Event != nil || res.Cluster != nil || res.Created || len(res.Warnings) > 0 {
		t.Errorf("rejected result carries output: %+v", res)
	}
	if evs, _, _ := f.ChangesSince(idx); len(evs) != 0 {
		t.Errorf("a rejected command emitted %s", describe(evs))
	}
}

// TestRecordRejoinLifecycle records pending → rebuilding (with the keeper's figures) →
// progress → caught up, and checks the event, the old primary's role and the watch events at
// each step.
func TestRecordRejoinLifecycle(t *testing.T) {
	at := func(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(t0.Add(d)) }
	type step struct {
		name     string
		cmd      *regentv1.RecordRejoinCommand
		at       time.Duration
		events   string // describe() with the index replaced by "i"
		rejoin   *regentv1.Rejoin
		role     regentv1.NodeRole
		loss     int64
		exact    bool
		lost     *int64
		fork     uint64
		final    uint64
		estimate bool // the loss is still the saga's estimate
	}
	steps := []step{
		{name: "pending", cmd: rejoinOf(rejoinPending), at: time.Minute, events: "failover_event:1",
			rejoin: &regentv1.Rejoin{Node: "n1", Status: rejoinPending, StartedAt: at(time.Minute)},
			role:   regentv1.NodeRole_NODE_ROLE_FENCED, loss: 300, estimate: true},
		{name: "same again is a no-op", cmd: rejoinOf(rejoinPending), at: 2 * time.Minute, events: "",
			rejoin: &regentv1.Rejoin{Node: "n1", Status: rejoinPending, StartedAt: at(time.Minute)},
			role:   regentv1.NodeRole_NODE_ROLE_FENCED, loss: 300, estimate: true},
		{name: "a failed attempt keeps its error", cmd: &regentv1.RecordRejoinCommand{EventId: 1, Term: 2,
			Rejoin: &regentv1.Rejoin{Status: rejoinPending, Detail: "keeper unreachable; retrying in 2s"}}, at: 3 * time.Minute,
			events: "failover_event:1",
			rejoin: &regentv1.Rejoin{Node: "n1", Status: rejoinPending, StartedAt: at(time.Minute), Detail: "keeper unreachable; retrying in 2s"},
			role:   regentv1.NodeRole_NODE_ROLE_FENCED, loss: 300, estimate: true},
		{name: "rewound, with exact figures, by a newer term", cmd: &regentv1.RecordRejoinCommand{EventId: 1, Term: 5,
			Rejoin:        &regentv1.Rejoin{Status: rejoinRebuilding, Method: "rewind"},
			DataLossBytes: proto.Int64(56056), LostTransactions: proto.Int64(25), ForkLsn: 0x402E830, FinalLsn: 0x403C328},
			at: 4 * time.Minute, events: "failover_event:1 cluster:orders",
			rejoin: &regentv1.Rejoin{Node: "n1", Status: rejoinRebuilding, Method: "rewind", StartedAt: at(time.Minute)},
			role:   regentv1.NodeRole_NODE_ROLE_REJOINING, loss: 56056, exact: true, lost: proto.Int64(25), fork: 0x402E830, final: 0x403C328},
		{name: "progress leaves the figures", cmd: &regentv1.RecordRejoinCommand{EventId: 1, Term: 5,
			Rejoin: &regentv1.Rejoin{Status: rejoinRebuilding, BytesBehind: 4096, RateBytesPerSecond: 1024, EtaSeconds: 4}},
			at: 5 * time.Minute, events: "failover_event:1",
			rejoin: &regentv1.Rejoin{Node: "n1", Status: rejoinRebuilding, Method: "rewind", StartedAt: at(time.Minute),
				BytesBehind: 4096, RateBytesPerSecond: 1024, EtaSeconds: 4},
			role: regentv1.NodeRole_NODE_ROLE_REJOINING, loss: 56056, exact: true, lost: proto.Int64(25), fork: 0x402E830, final: 0x403C328},
		{name: "caught up", cmd: &regentv1.RecordRejoinCommand{EventId: 1, Term: 5, Rejoin: &regentv1.Rejoin{Status: rejoinCaughtUp}},
			at: 6 * time.Minute, events: "failover_event:1 cluster:orders",
			rejoin: &regentv1.Rejoin{Node: "n1", Status: rejoinCaughtUp, Method: "rewind", StartedAt: at(time.Minute), FinishedAt: at(6 * time.Minute)},
			role:   regentv1.NodeRole_NODE_ROLE_REPLICA, loss: 56056, exact: true, lost: proto.Int64(25), fork: 0x402E830, final: 0x403C328},
		{name: "caught up again keeps finished_at", cmd: &regentv1.RecordRejoinCommand{EventId: 1, Term: 5, Rejoin: &regentv1.Rejoin{Status: rejoinCaughtUp}},
			at: 7 * time.Minute, events: "",
			rejoin: &regentv1.Rejoin{Node: "n1", Status: rejoinCaughtUp, Method: "rewind", StartedAt: at(time.Minute), FinishedAt: at(6 * time.Minute)},
			role:   regentv1.NodeRole_NODE_ROLE_REPLICA, loss: 56056, exact: true, lost: proto.Int64(25), fork: 0x402E830, final: 0x403C328},
	}
	f := atStep(stepCompleted)(t)
	for _, s := range steps {
		idx := f.AppliedIndex()
		e := rejoinCmd(s.cmd)
		e.at = t0.Add(s.at)
		res := applyNext(t, f, e)
		if res.Err != nil {
			t.Fatalf("%s: %v", s.name, res.Err)
		}
		evs, _, _ := f.ChangesSince(idx)
		got := strings.ReplaceAll(describe(evs), fmt.Sprintf("%d:", idx+1), "")
		if got != s.events {
			t.Errorf("%s: events = %q, want %q", s.name, got, s.events)
		}
		ev := eventOf(t, f, 1)
		if !proto.Equal(ev.GetRejoin(), s.rejoin) {
			t.Errorf("%s: rejoin\n got %v\nwant %v", s.name, ev.GetRejoin(), s.rejoin)
		}
		if !proto.Equal(res.Event, ev) {
			t.Errorf("%s: Result.Event differs from the event", s.name)
		}
		if ev.GetDataLossBytes() != s.loss || ev.GetDataLossExact() != s.exact {
			t.Errorf("%s: loss %d exact %v, want %d %v", s.name, ev.GetDataLossBytes(), ev.GetDataLossExact(), s.loss, s.exact)
		}
		if (ev.LostTransactions == nil) != (s.lost == nil) || (s.lost != nil && ev.GetLostTransactions() != *s.lost) {
			t.Errorf("%s: lost transactions %v, want %v", s.name, ev.LostTransactions, s.lost)
		}
		if ev.GetForkLsn() != s.fork || ev.GetFinalLsn() != s.final {
			t.Errorf("%s: fork %X final %X, want %X %X", s.name, ev.GetForkLsn(), ev.GetFinalLsn(), s.fork, s.final)
		}
		if ev.GetTerm() != 2 {
			t.Errorf("%s: the event's term moved to %d; the rejoin does not take the saga over", s.name, ev.GetTerm())
		}
		c, _ := f.Cluster("orders")
		ns := c.NodeStatus[0]
		if ns.GetName() != "n1" || ns.GetRole() != s.role {
			t.Errorf("%s: n1 role = %v, want %v", s.name, ns.GetRole(), s.role)
		}
		if c.GetPrimary() != "n2" {
			t.Fatalf("%s: primary = %s", s.name, c.GetPrimary())
		}
		st, _ := f.State()
		if err := checkState(st); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
	}
}

// TestRecordRejoinFailedKeepsTheRole: a failed rejoin leaves the old primary fenced and the
// loss the saga's estimate.
func TestRecordRejoinFailedKeepsTheRole(t *testing.T) {
	f := atStep(stepCompleted)(t)
	mustApply(t, f, rejoinCmd(&regentv1.RecordRejoinCommand{EventId: 1, Term: 2,
		Rejoin: &regentv1.Rejoin{Status: rejoinFailed, Detail: "pg_rewind: could not connect"}}))
	ev := eventOf(t, f, 1)
	if ev.GetRejoin().GetStatus() != rejoinFailed || ev.GetRejoin().GetFinishedAt() == nil || ev.GetDataLossExact() {
		t.Fatalf("event = %v", ev)
	}
	c, _ := f.Cluster("orders")
	if c.NodeStatus[0].GetRole() != regentv1.NodeRole_NODE_ROLE_FENCED {
		t.Fatalf("n1 role = %v", c.NodeStatus[0].GetRole())
	}
	// Pending again (a retry) clears finished_at.
	mustApply(t, f, rejoinCmd(rejoinOf(rejoinPending)))
	if ev := eventOf(t, f, 1); ev.GetRejoin().GetFinishedAt() != nil {
		t.Fatalf("finished_at after a retry = %v", ev.GetRejoin().GetFinishedAt())
	}
}

// A node update the leader computed before a rejoin commit (its role from then) cannot undo
// the rejoin's role: fenced and rejoining are set and cleared by the sagas only, while the
// other facts — and other roles — follow the observations.
func TestStaleNodeUpdateKeepsSagaRoles(t *testing.T) {
	f := atStep(stepCompleted)(t)
	upd := func(role regentv1.NodeRole, lsn uint64) entry {
		return channelsCmd(&regentv1.UpdateChannelsCommand{Nodes: []*regentv1.NodeStatusUpdate{
			{Cluster: "orders", Status: &regentv1.NodeStatus{Name: "n1", Role: role, Timeline: 2, ReplayLsn: lsn}}}})
	}
	n1 := func() *regentv1.NodeStatus {
		c, _ := f.Cluster("orders")
		return c.NodeStatus[0]
	}
	mustApply(t, f, rejoinCmd(rejoinOf(rejoinRebuilding)))
	mustApply(t, f, upd(regentv1.NodeRole_NODE_ROLE_FENCED, 100))
	if ns := n1(); ns.Role != regentv1.NodeRole_NODE_ROLE_REJOINING || ns.ReplayLsn != 100 {
		t.Fatalf("after a stale fenced update: %v", ns)
	}
	mustApply(t, f, upd(regentv1.NodeRole_NODE_ROLE_REPLICA, 200))
	if ns := n1(); ns.Role != regentv1.NodeRole_NODE_ROLE_REJOINING || ns.ReplayLsn != 200 {
		t.Fatalf("an update cleared rejoining: %v", ns)
	}
	mustApply(t, f, rejoinCmd(rejoinOf(rejoinCaughtUp)))
	mustApply(t, f, upd(regentv1.NodeRole_NODE_ROLE_REJOINING, 300))
	if ns := n1(); ns.Role != regentv1.NodeRole_NODE_ROLE_REPLICA || ns.ReplayLsn != 300 {
		t.Fatalf("after a stale rejoining update: %v", ns)
	}
	mustApply(t, f, upd(regentv1.NodeRole_NODE_ROLE_PRIMARY, 400))
	if ns := n1(); ns.Role != regentv1.NodeRole_NODE_ROLE_PRIMARY {
		t.Fatalf("other roles follow the observations: %v", ns)
	}
}
