package agent

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/regentdb/regent/alert"
	"github.com/regentdb/regent/fsm"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// fakeLeader commits to a real FSM, as the leader's store would, with a fixed term.
type fakeLeader struct {
	t    *testing.T
	f    *fsm.FSM
	idx  uint64
	term uint64
	at   func() time.Time
}

func (l *fakeLeader) Propose(_ context.Context, typ regentv1.CommandType, p proto.Message) (*fsm.Result, error) {
	data, err := fsm.Encode(typ, p, l.at(), "regent/w1")
	if err != nil {
		return nil, err
	}
	l.idx++
	return l.f.Apply(&raft.Log{Index: l.idx, Type: raft.LogCommand, Data: data}).(*fsm.Result), nil
}
func (l *fakeLeader) Term() uint64                       { return l.term }
func (l *fakeLeader) VerifyLeader(context.Context) error { return nil }
func (l *fakeLeader) State() *regentv1.State {
	st, _ := l.f.State()
	return st
}

func (l *fakeLeader) commit(typ regentv1.CommandType, p proto.Message) {
	l.t.Helper()
	res, err := l.Propose(context.Background(), typ, p)
	if err == nil {
		err = res.Err
	}
	if err != nil {
		l.t.Fatalf("%s: %v", typ, err)
	}
}

// fakeKeepers answers KeeperStatus and Instruct as the test sets, and records the calls.
type fakeKeepers struct {
	mu        sync.Mutex
	statusErr error
	rejoining bool
	resp      *regentv1.InstructResponse
	err       error
	statuses  int
	instructs []*regentv1.InstructRequest
}

func (k *fakeKeepers) Status(context.Context, *regentv1.NodeSpec) (*regentv1.KeeperStatusResponse, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.statuses++
	if k.statusErr != nil {
		return nil, k.statusErr
	}
	return &regentv1.KeeperStatusResponse{Rejoining: k.rejoining}, nil
}

func (k *fakeKeepers) Instruct(_ context.Context, c *regentv1.Cluster, n *regentv1.NodeSpec, action regentv1.KeeperAction,
	term, eventID uint64, upstream *regentv1.NodeSpec) (*regentv1.InstructResponse, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.instructs = append(k.instructs, &regentv1.InstructRequest{Token: &regentv1.FencingToken{Term: term, EventId: eventID},
		Action: action, Cluster: c.GetName(), Node: n.GetName(), UpstreamHost: upstream.GetHost(), UpstreamPort: upstream.GetPort()})
	return k.resp, k.err
}

func (k *fakeKeepers) calls() (int, int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.statuses, len(k.instructs)
}

type alertLog struct {
	mu sync.Mutex
	as []alert.Alert
}

func (a *alertLog) Notify(al alert.Alert) { a.mu.Lock(); a.as = append(a.as, al); a.mu.Unlock() }

// rejoinRig is orders after a completed failover from pg-us (with a keeper) to pg-eu, the
// rejoin flow over it with a clock the test moves, and fake keepers.
type rejoinRig struct {
	t       *testing.T
	now     time.Time
	leader  *fakeLeader
	keepers *fakeKeepers
	alerts  *alertLog
	r       *rejoins
}

func newRejoinRig(t *testing.T) *rejoinRig {
	rr := &rejoinRig{t: t, now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), keepers: &fakeKeepers{}, alerts: &alertLog{}}
	rr.leader = &fakeLeader{t: t, f: fsm.New(), term: 5, at: func() time.Time { return rr.now }}
	rr.leader.commit(regentv1.CommandType_COMMAND_TYPE_APPLY_CLUSTER, &regentv1.ApplyClusterCommand{Spec: &regentv1.ClusterSpec{
		Name: "orders", Primary: "pg-us", Nodes: []*regentv1.NodeSpec{
			{Name: "pg-us", Region: "us-east", Host: "10.0.1.1", Port: 5432, KeeperAddr: "10.0.1.1:7201"},
			{Name: "pg-eu", Region: "eu-west", Host: "10.0.2.1", Port: 5432},
			{Name: "pg-ap", Region: "ap-south", Host: "10.0.3.1", Port: 5432},
		}}})
	rr.leader.commit(regentv1.CommandType_COMMAND_TYPE_START_FAILOVER, &regentv1.StartFailoverCommand{Cluster: "orders",
		FromNode: "pg-us", ToNode: "pg-eu", Term: 5, EstimatedLossBytes: 900})
	for _, s := range []regentv1.FailoverStep{regentv1.FailoverStep_FAILOVER_STEP_FENCED, regentv1.FailoverStep_FAILOVER_STEP_PROMOTED,
		regentv1.FailoverStep_FAILOVER_STEP_REPOINTED, regentv1.FailoverStep_FAILOVER_STEP_PUBLISHED, regentv1.FailoverStep_FAILOVER_STEP_COMPLETED} {
		rr.leader.commit(regentv1.CommandType_COMMAND_TYPE_ADVANCE_FAILOVER, &regentv1.AdvanceFailoverCommand{EventId: 1, Term: 5, Step: s, FenceMethod: "lease"})
	}
	rr.r = newRejoins(context.Background(), rr.leader, rr.keepers, rr.alerts, slog.New(slog.DiscardHandler))
	rr.r.now = func() time.Time { return rr.now }
	return rr
}

// step runs one pass of the flow and waits for the attempts it started.
func (rr *rejoinRig) step() {
	rr.r.step(rr.leader.State())
	rr.r.wg.Wait()
}

func (rr *rejoinRig) event() *regentv1.FailoverEvent { return rr.leader.State().GetFailoverEvents()[0] }

func (rr *rejoinRig) role(node string) regentv1.NodeRole {
	c, _ := rr.leader.f.Cluster("orders")
	for _, ns := range c.GetNodeStatus() {
		if ns.GetName() == node {
			return ns.GetRole()
		}
	}
	return regentv1.NodeRole_NODE_ROLE_UNKNOWN
}

// facts commits node facts: pg-eu the primary on timeline 2 at primaryLSN, pg-us streaming on
// timeline tli at replay, and the channel eu-west → us-east with status, lag and catch-up.
func (rr *rejoinRig) facts(tli uint32, primaryLSN, replay uint64, status regentv1.ChannelStatus, lagSeconds int64, rate, eta float64) {
	rr.t.Helper()
	rr.leader.commit(regentv1.CommandType_COMMAND_TYPE_UPDATE_CHANNELS, &regentv1.UpdateChannelsCommand{
		Clusters: []string{"orders"},
		Channels: []*regentv1.ReplicationChannel{{Cluster: "orders", PrimaryRegion: "eu-west", SecondaryRegion: "us-east", Status: status,
			LagSeconds: lagSeconds, CatchupRateBytesPerSecond: rate, CatchupEtaSeconds: eta}},
		Nodes: []*regentv1.NodeStatusUpdate{
			{Cluster: "orders", Status: &regentv1.NodeStatus{Name: "pg-eu", Role: regentv1.NodeRole_NODE_ROLE_PRIMARY, Timeline: 2, CurrentLsn: primaryLSN}},
			{Cluster: "orders", Status: &regentv1.NodeStatus{Name: "pg-us", Role: rr.role("pg-us"), Timeline: tli, ReplayLsn: replay, WalReceiverStatus: "streaming"}},
		}})
}

func TestRejoinFlow(t *testing.T) {
	rr := newRejoinRig(t)
	k := rr.keepers

	// A completed failover whose old primary has a keeper: pending.
	rr.keepers.statusErr = errors.New("connection refused")
	rr.r.step(rr.leader.State()) // records pending only
	if rj := rr.event().GetRejoin(); rj.GetStatus() != regentv1.RejoinStatus_REJOIN_STATUS_PENDING ||
		!strings.Contains(rj.GetDetail(), "waiting for the keeper of pg-us (10.0.1.1:7201)") || rj.GetStartedAt() == nil {
		t.Fatalf("first look: %v", rj)
	}

	// The keeper does not answer: asked every 2 s, never instructed, and the event says why.
	rr.step()
	if s, i := k.calls(); s != 1 || i != 0 {
		t.Fatalf("calls: %d status, %d instruct", s, i)
	}
	if d := rr.event().GetRejoin().GetDetail(); !strings.Contains(d, "the keeper of pg-us does not answer: connection refused; retrying in 2s") {
		t.Errorf("detail = %q", d)
	}
	rr.now = rr.now.Add(time.Second)
	rr.step()
	if s, _ := k.calls(); s != 1 {
		t.Errorf("asked again after 1 s (%d calls): the backoff is 2 s", s)
	}
	rr.now = rr.now.Add(time.Second)
	rr.step()
	if s, _ := k.calls(); s != 2 {
		t.Errorf("not asked again after 2 s (%d calls)", s)
	}

	// A keeper still busy with an earlier REJOIN is left alone.
	k.statusErr, k.rejoining = nil, true
	rr.now = rr.now.Add(2 * time.Second)
	rr.step()
	if _, i := k.calls(); i != 0 {
		t.Errorf("instructed a keeper that is rejoining already")
	}

	// REJOIN that does not complete: retried with a doubling backoff, the reason shown.
	k.rejoining = false
	k.resp = &regentv1.InstructResponse{Done: false, Detail: "measuring the data loss: the new primary does not answer"}
	for i, wait := range []time.Duration{2 * time.Second, 2 * time.Second, 4 * time.Second} {
		rr.now = rr.now.Add(wait)
		rr.step()
		if _, n := k.calls(); n != i+1 {
			t.Fatalf("after %v: %d instructions, want %d", wait, n, i+1)
		}
	}
	if d := rr.event().GetRejoin().GetDetail(); !strings.Contains(d, "REJOIN did not complete: measuring the data loss: the new primary does not answer; retrying in 8s") {
		t.Errorf("detail after 3 failures = %q", d)
	}
	rr.now = rr.now.Add(7 * time.Second)
	rr.step()
	if _, n := k.calls(); n != 3 {
		t.Errorf("retried before the 8 s backoff (%d instructions)", n)
	}

	// It completes: the keeper's exact figures on the event, the node rejoining.
	k.resp = &regentv1.InstructResponse{Done: true, Rejoin: &regentv1.RejoinReport{Ok: true, Method: "rewind", DataLossBytes: 56056,
		LostTransactions: 25, ForkLsn: 0x402E830, FinalLsn: 0x403C328}}
	rr.now = rr.now.Add(time.Second)
	rr.step()
	k.mu.Lock()
	last := k.instructs[len(k.instructs)-1]
	k.mu.Unlock()
	if last.GetAction() != regentv1.KeeperAction_KEEPER_ACTION_REJOIN || last.GetToken().GetTerm() != 5 || last.GetToken().GetEventId() != 1 ||
		last.GetNode() != "pg-us" || last.GetUpstreamHost() != "10.0.2.1" || last.GetUpstreamPort() != 5432 {
		t.Errorf("instruction = %v", last)
	}
	ev := rr.event()
	if rj := ev.GetRejoin(); rj.GetStatus() != regentv1.RejoinStatus_REJOIN_STATUS_REBUILDING || rj.GetMethod() != "rewind" ||
		!ev.GetDataLossExact() || ev.GetDataLossBytes() != 56056 || ev.GetLostTransactions() != 25 || ev.GetForkLsn() != 0x402E830 ||
		ev.GetFinalLsn() != 0x403C328 || rr.role("pg-us") != regentv1.NodeRole_NODE_ROLE_REJOINING {
		t.Fatalf("after the rejoin: %v, role %v", ev, rr.role("pg-us"))
	}
	if len(rr.alerts.as) != 1 || !strings.Contains(rr.alerts.as[0].Message, "data loss of failover 1: 56056 bytes, 25 transactions") {
		t.Errorf("alerts = %v", rr.alerts.as)
	}

	// Catching up: progress from the node's facts and the channel's catch-up figures, at
	// most every 2 s; then caught up once the rebuilding channel lags under the threshold.
	rr.facts(2, 10000, 6000, regentv1.ChannelStatus_CHANNEL_STATUS_REBUILDING, 90, 1000, 4)
	rr.step()
	if rj := rr.event().GetRejoin(); rj.GetBytesBehind() != 4000 || rj.GetRateBytesPerSecond() != 1000 || rj.GetEtaSeconds() != 4 {
		t.Fatalf("progress = %v", rj)
	}
	rr.facts(2, 10000, 8000, regentv1.ChannelStatus_CHANNEL_STATUS_REBUILDING, 90, 1000, 2)
	rr.now = rr.now.Add(time.Second)
	rr.step()
	if rj := rr.event().GetRejoin(); rj.GetBytesBehind() != 4000 {
		t.Errorf("progress recorded again within 2 s: %v", rj)
	}
	rr.now = rr.now.Add(time.Second)
	rr.step()
	if rj := rr.event().GetRejoin(); rj.GetBytesBehind() != 2000 || rj.GetEtaSeconds() != 2 {
		t.Errorf("progress after 2 s = %v", rj)
	}
	rr.facts(2, 10000, 10000, regentv1.ChannelStatus_CHANNEL_STATUS_REBUILDING, 0, 0, 0)
	rr.step()
	ev = rr.event()
	if rj := ev.GetRejoin(); rj.GetStatus() != regentv1.RejoinStatus_REJOIN_STATUS_CAUGHT_UP || rj.GetFinishedAt() == nil ||
		rj.GetMethod() != "rewind" || rr.role("pg-us") != regentv1.NodeRole_NODE_ROLE_REPLICA {
		t.Fatalf("caught up: %v, role %v", rj, rr.role("pg-us"))
	}
	before := proto.Clone(ev)
	rr.now = rr.now.Add(time.Minute)
	rr.step()
	if !proto.Equal(before, rr.event()) {
		t.Errorf("a caught-up rejoin was recorded again: %v", rr.event())
	}
}

// A keeper that answers done without a RejoinReport (an older keeper): rebuilding, the loss
// left the estimate, the keeper's detail kept.
func TestRejoinFlowWithoutReport(t *testing.T) {
	rr := newRejoinRig(t)
	rr.keepers.resp = &regentv1.InstructResponse{Done: true, Detail: `{"method":"rewind"}`}
	rr.step() // pending
	rr.step() // instructed
	ev := rr.event()
	if rj := ev.GetRejoin(); rj.GetStatus() != regentv1.RejoinStatus_REJOIN_STATUS_REBUILDING || ev.GetDataLossExact() ||
		ev.GetDataLossBytes() != 900 || ev.LostTransactions != nil || !strings.Contains(rj.GetDetail(), `its detail: {"method":"rewind"}`) {
		t.Fatalf("event = %v", ev)
	}
}

// An old primary already streaming from the primary (rejoined by hand before it had a keeper)
// is recorded caught up, method external, and never instructed.
func TestRejoinFlowExternal(t *testing.T) {
	rr := newRejoinRig(t)
	rr.facts(2, 10000, 9000, regentv1.ChannelStatus_CHANNEL_STATUS_ACTIVE, 0, 0, 0)
	rr.step()
	if rj := rr.event().GetRejoin(); rj.GetStatus() != regentv1.RejoinStatus_REJOIN_STATUS_CAUGHT_UP || rj.GetMethod() != "external" ||
		rr.event().GetDataLossExact() {
		t.Fatalf("rejoin = %v", rj)
	}
	if s, i := rr.keepers.calls(); s != 0 || i != 0 {
		t.Errorf("keeper calls: %d status, %d instruct", s, i)
	}
}
