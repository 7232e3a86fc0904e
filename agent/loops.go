package agent

import (
	"context"
	"errors"
	"sort"
	"sync"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/regentdb/regent/fsm"
	"github.com/regentdb/regent/gossip"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// maxVoters is the largest Raft voter set; witnesses beyond it join as non-voters.
const maxVoters = 5

// joinLoop contacts the configured join addresses until one answers (like Consul's
// retry_join), so witnesses may start in any order.
func (a *Agent) joinLoop(ctx context.Context) {
	if len(a.cfg.Join) == 0 {
		return
	}
	backoff := 200 * time.Millisecond
	for {
		n, err := a.gossip.Join(a.cfg.Join)
		if err == nil && n > 0 {
			a.logger.Info("joined gossip", "contacted", n)
			return
		}
		a.logger.Debug("gossip join failed; retrying", "join", a.cfg.Join, "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// bootstrapLoop bootstraps Raft once bootstrap_expect fresh witnesses see each other, unless
// some witness already has Raft state (then this one waits to be added by the leader). It also
// advertises has_state once this node has any, and then ends.
func (a *Agent) bootstrapLoop(ctx context.Context) {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		if a.store.HasState() {
			if err := a.gossip.SetHasState(true); err != nil {
				a.logger.Warn("advertise raft state", "err", err)
			} else {
				return
			}
		} else {
			a.maybeBootstrap()
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-a.gossip.Changed():
		}
	}
}

func (a *Agent) maybeBootstrap() {
	voters, exists := bootstrapVoters(a.gossip.Peers())
	if exists {
		return // a cluster exists: wait for its leader to add us
	}
	if len(voters) < a.cfg.BootstrapExpect {
		return
	}
	if len(voters) > a.cfg.BootstrapExpect {
		a.logger.Warn("more fresh witnesses than bootstrap_expect are visible; bootstrapping with all of them",
			"visible", len(voters), "bootstrap_expect", a.cfg.BootstrapExpect)
	}
	a.logger.Info("bootstrapping raft", "voters", len(voters))
	if err := a.store.Bootstrap(voters); err != nil {
		a.logger.Error("bootstrap failed", "err", err)
	}
}

// bootstrapVoters is the Raft configuration the alive fresh witnesses among peers would
// bootstrap with (ID → Raft address), or exists = true when one of them already has Raft
// state. Only witnesses count: a keeper (or any member without a Raft identity) is never a
// voter and never counts toward bootstrap_expect, whatever gossip hands over.
func bootstrapVoters(peers []gossip.Peer) (voters map[string]string, exists bool) {
	voters = map[string]string{}
	for _, p := range raftCandidates(peers) {
		if p.Meta.HasState {
			return nil, true
		}
		voters[p.Meta.ID] = p.Meta.RaftAddr
	}
	return voters, false
}

// raftCandidates are the peers that may be Raft servers, sorted by name: alive witnesses
// with a Raft identity and address. Bootstrap and reconcile build membership only from these.
func raftCandidates(peers []gossip.Peer) []gossip.Peer {
	var out []gossip.Peer
	for _, p := range peers {
		if p.State != "alive" || !p.Meta.IsWitness() || p.Meta.ID == "" || p.Meta.RaftAddr == "" {
			continue
		}
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// leaderLoop runs one leader session per term in which this node leads, under a context that
// is cancelled the moment leadership is lost (Consul's pattern).
func (a *Agent) leaderLoop(ctx context.Context) {
	type session struct {
		cancel context.CancelFunc
		done   chan struct{}
	}
	var cur *session
	end := func() {
		if cur != nil {
			cur.cancel()
			<-cur.done
			cur = nil
		}
	}
	defer end()
	for {
		select {
		case <-ctx.Done():
			return
		case isLeader := <-a.store.LeaderCh():
			end()
			if !isLeader {
				a.logger.Info("leadership lost")
				continue
			}
			lctx, cancel := context.WithCancel(ctx)
			cur = &session{cancel: cancel, done: make(chan struct{})}
			go func(done chan struct{}) {
				defer close(done)
				a.lead(lctx)
			}(cur.done)
		}
	}
}

// lead establishes leadership (a barrier so the FSM holds everything earlier leaders
// committed), then, until the context ends, reconciles gossip membership into Raft and runs the
// leader's share of observing (see observeAsLeader).
func (a *Agent) lead(ctx context.Context) {
	a.logger.Info("leadership acquired", "term", a.store.Term())
	for {
		err := a.store.Barrier(10 * time.Second)
		if err == nil {
			break
		}
		a.logger.Warn("leader barrier failed; retrying", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
	var leading sync.WaitGroup
	leading.Add(3)
	go func() {
		defer leading.Done()
		a.observeAsLeader(ctx)
	}()
	go func() {
		defer leading.Done()
		a.failoverAsLeader(ctx)
	}()
	go func() {
		defer leading.Done()
		a.rejoinAsLeader(ctx)
	}()
	defer leading.Wait()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		a.reconcile(ctx)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-a.gossip.Changed():
		}
	}
}

// reconcile makes the member table and the Raft configuration match the alive gossip witnesses
// (raftCandidates: never a keeper):
// records each witness's addresses, adds missing witnesses as voters up to five (non-voters
// beyond), promotes non-voters while there is room, and never re-adds a removed witness.
func (a *Agent) reconcile(ctx context.Context) {
	defer a.reconciles.Add(1)
	servers, err := a.store.Servers()
	if err != nil {
		return
	}
	inConfig := map[string]bool{}
	voterSet := map[string]bool{}
	byAddr := map[string]string{}
	for _, s := range servers {
		inConfig[s.ID] = true
		voterSet[s.ID] = s.Voter
		byAddr[s.Address] = s.ID
	}
	voters := 0
	for _, v := range voterSet {
		if v {
			voters++
		}
	}
	for _, p := range raftCandidates(a.gossip.Peers()) {
		if ctx.Err() != nil || !a.store.IsLeader() {
			return
		}
		if a.fsm.IsRemoved(p.Meta.ID) {
			continue
		}
		a.recordMember(ctx, p)
		if old, ok := byAddr[p.Meta.RaftAddr]; ok && old != p.Meta.ID {
			// Same address, new identity: the witness was wiped and restarted.
			a.logger.Info("replacing a witness's old raft identity", "name", p.Name, "old", old, "new", p.Meta.ID)
			if err := a.store.RemoveServer(old); err != nil {
				a.logger.Warn("remove stale raft server", "id", old, "err", err)
				continue
			}
			if voterSet[old] {
				voters--
			}
			delete(inConfig, old)
		}
		switch {
		case !inConfig[p.Meta.ID] && voters < maxVoters:
			if err := a.store.AddVoter(p.Meta.ID, p.Meta.RaftAddr); err != nil {
				a.logger.Warn("add voter", "name", p.Name, "err", err)
				continue
			}
			voters++
			a.logger.Info("witness added as voter", "name", p.Name, "id", p.Meta.ID)
		case !inConfig[p.Meta.ID]:
			if err := a.store.AddNonvoter(p.Meta.ID, p.Meta.RaftAddr); err != nil {
				a.logger.Warn("add non-voter", "name", p.Name, "err", err)
				continue
			}
			a.logger.Info("witness added as non-voter (five voters already)", "name", p.Name, "id", p.Meta.ID)
		case !voterSet[p.Meta.ID] && voters < maxVoters:
			if err := a.store.AddVoter(p.Meta.ID, p.Meta.RaftAddr); err != nil {
				a.logger.Warn("promote non-voter", "name", p.Name, "err", err)
				continue
			}
			voters++
			a.logger.Info("non-voter promoted to voter", "name", p.Name, "id", p.Meta.ID)
		}
	}
}

// recordMember commits the witness's addresses when the member table lacks or differs from them.
func (a *Agent) recordMember(ctx context.Context, p gossip.Peer) {
	if m, ok := a.fsm.Member(p.Name); ok && m.GetId() == p.Meta.ID && m.GetRegion() == p.Meta.Region &&
		m.GetRaftAddr() == p.Meta.RaftAddr && m.GetGossipAddr() == p.Addr &&
		m.GetGrpcAddr() == p.Meta.GRPCAddr && m.GetHttpAddr() == p.Meta.HTTPAddr {
		return
	}
	cmd := &regentv1.UpsertMemberCommand{Member: &regentv1.Member{
		Name: p.Name, Id: p.Meta.ID, Region: p.Meta.Region, RaftAddr: p.Meta.RaftAddr,
		GossipAddr: p.Addr, GrpcAddr: p.Meta.GRPCAddr, HttpAddr: p.Meta.HTTPAddr,
	}}
	res, err := a.store.Propose(ctx, regentv1.CommandType_COMMAND_TYPE_UPSERT_MEMBER, cmd, "regent/"+a.cfg.NodeName)
	switch {
	case err != nil:
		a.logger.Warn("record member", "name", p.Name, "err", err)
	case res.Err != nil && !errors.Is(res.Err, fsm.ErrRemoved):
		a.logger.Warn("record member rejected", "name", p.Name, "err", res.Err)
	}
}

// Reconciles counts the leader's completed reconciliation rounds (for tests that must observe
// that a round happened without a fixed sleep).
func (a *Agent) Reconciles() uint64 { return a.reconciles.Load() }

// healthLoop keeps the gRPC health service in step with readiness.
func (a *Agent) healthLoop(ctx context.Context) {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	last := healthpb.HealthCheckResponse_UNKNOWN
	for {
		st := healthpb.HealthCheckResponse_NOT_SERVING
		if ok, _ := a.Ready(); ok {
			st = healthpb.HealthCheckResponse_SERVING
		}
		if st != last {
			a.health.SetServingStatus("", st)
			a.health.SetServingStatus(regentv1.Regent_ServiceDesc.ServiceName, st)
			last = st
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// Ready reports whether the witness knows a leader and has applied what it knows is committed;
// the string says why not.
func (a *Agent) Ready() (bool, string) {
	if !a.store.HasState() {
		return false, "not yet part of a raft cluster (waiting for bootstrap_expect witnesses or to be added)"
	}
	if id, _ := a.store.Leader(); id == "" {
		return false, "no raft leader known"
	}
	if applied, commit := a.store.AppliedIndex(), a.store.Raft().CommitIndex(); applied < commit {
		return false, "catching up: applied index behind commit index"
	}
	return true, "ok"
}
