package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/regentdb/regent/alert"
	"github.com/regentdb/regent/coordinator"
	"github.com/regentdb/regent/fsm"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
	"github.com/regentdb/regent/spec"
	"github.com/regentdb/regent/store"
)

// refusalEvery is the least time between two committed refusal changes of one cluster: a
// reason whose details drift (lag figures, elapsed times) or a primary that flickers between
// down and up under load writes the log at most this often; the first refusal after a quiet
// spell is committed at once.
const refusalEvery = 5 * time.Second

// leaderAdapter lets a saga commit through this witness's store as the leader.
type leaderAdapter struct{ a *Agent }

func (l leaderAdapter) Propose(ctx context.Context, t regentv1.CommandType, p proto.Message) (*fsm.Result, error) {
	return l.a.store.Propose(ctx, t, p, "regent/"+l.a.cfg.NodeName)
}
func (l leaderAdapter) Term() uint64 { return l.a.store.Term() }
func (l leaderAdapter) VerifyLeader(ctx context.Context) error {
	return l.a.store.VerifyLeader(ctx)
}
func (l leaderAdapter) State() *regentv1.State {
	st, _ := l.a.fsm.State()
	return st
}

// failovers is the leader's failover work in one leader session: deciding, starting and
// driving sagas, and resuming the ones an earlier leader left unfinished.
type failovers struct {
	a       *Agent
	ctx     context.Context
	mu      sync.Mutex
	running map[uint64]bool
	wg      sync.WaitGroup
	refused map[string]time.Time // cluster → when its refusal was last committed
	// checking and checked pace the fence checks of fenced nodes (cluster/node keys).
	checking map[string]bool
	checked  map[string]time.Time
	// keeperChecks are the background looks at each cluster's primary's keeper, taken while
	// some witness votes the primary unreachable (see checkKeeperEarly).
	keeperChecks map[string]*keeperCheck
}

// keeperCheck is the last background KeeperStatus of one cluster's primary's keeper.
type keeperCheck struct {
	node     string
	running  bool
	finished time.Time // when the last check ended
	failed   bool      // it did not answer
}

// failoverAsLeader runs until ctx (the leader session) ends.
func (a *Agent) failoverAsLeader(ctx context.Context) {
	f := &failovers{a: a, ctx: ctx, running: map[uint64]bool{}, refused: map[string]time.Time{},
		checking: map[string]bool{}, checked: map[string]time.Time{}, keeperChecks: map[string]*keeperCheck{}}
	a.obsMu.Lock()
	a.leaderFailovers = f
	a.obsMu.Unlock()
	defer func() {
		a.obsMu.Lock()
		a.leaderFailovers = nil
		a.obsMu.Unlock()
		f.wg.Wait()
	}()
	// Resume what an earlier leader left half done.
	st, _ := a.fsm.State()
	for _, ev := range st.GetFailoverEvents() {
		if open(ev) {
			a.logger.Info("resuming failover saga", "event", ev.GetId(), "cluster", ev.GetCluster(), "step", ev.GetStep().String())
			f.drive(ev.GetId())
		}
	}
	tick := time.NewTicker(decideEvery(st))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		st, _ := a.fsm.State()
		tick.Reset(decideEvery(st))
		for _, c := range st.GetClusters() {
			f.decide(st, c)
			f.enforceFences(c)
		}
	}
}

// fenceCheckEvery is how often the leader checks each fenced node for having come back
// writable.
const fenceCheckEvery = time.Second

// enforceFences re-fences, in the background, any node the log holds as fenced that answers
// as a writable primary: a fenced old primary must stay fenced until it has rejoined.
func (f *failovers) enforceFences(c *regentv1.Cluster) {
	for _, ns := range c.GetNodeStatus() {
		if ns.GetRole() != regentv1.NodeRole_NODE_ROLE_FENCED || ns.GetName() == c.GetPrimary() {
			continue
		}
		n := nodeOf(c, ns.GetName())
		key := c.GetName() + "/" + ns.GetName()
		f.mu.Lock()
		due := n != nil && !f.checking[key] && time.Since(f.checked[key]) >= fenceCheckEvery
		if due {
			f.checking[key] = true
		}
		f.mu.Unlock()
		if !due {
			continue
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer func() {
				f.mu.Lock()
				f.checking[key] = false
				f.checked[key] = time.Now()
				f.mu.Unlock()
			}()
			pol := spec.WithDefaults(c.GetPolicy())
			ctx, cancel := context.WithTimeout(f.ctx, time.Duration(4*pol.GetProbeTimeoutMs())*time.Millisecond+5*time.Second)
			defer cancel()
			w := world{f.a}
			did, err := w.enforceFence(ctx, c, n)
			switch {
			case err != nil:
				f.a.logger.Error("fenced node is writable and could not be fenced again", "cluster", c.GetName(), "node", n.GetName(), "err", err)
				w.Alert("fence_lost", alert.SeverityCritical, c.GetName(), fmt.Sprintf("fenced node %s of %s accepts writes again and the SQL fence failed: %v", n.GetName(), c.GetName(), err), nil)
			case did:
				f.a.logger.Warn("fenced node came back writable; fenced it again", "cluster", c.GetName(), "node", n.GetName())
				w.Alert("refenced", alert.SeverityWarning, c.GetName(), fmt.Sprintf("fenced node %s of %s came back as a writable primary; regent made it read-only again", n.GetName(), c.GetName()), nil)
			}
		}()
	}
}

// decideEvery paces decisions at half the shortest probe interval.
func decideEvery(st *regentv1.State) time.Duration {
	d := spec.DefaultProbeInterval
	for _, c := range st.GetClusters() {
		if iv := time.Duration(spec.WithDefaults(c.GetPolicy()).GetProbeIntervalMs()) * time.Millisecond; iv < d {
			d = iv
		}
	}
	return max(d/2, 50*time.Millisecond)
}

func open(ev *regentv1.FailoverEvent) bool {
	s := ev.GetStep()
	return s != regentv1.FailoverStep_FAILOVER_STEP_COMPLETED && s != regentv1.FailoverStep_FAILOVER_STEP_ABORTED
}

func (f *failovers) decide(st *regentv1.State, c *regentv1.Cluster) {
	for _, ev := range st.GetFailoverEvents() {
		if ev.GetCluster() == c.GetName() && open(ev) {
			f.drive(ev.GetId()) // no-op while it runs
			return
		}
	}
	now := time.Now()
	f.checkKeeperEarly(c)
	d := coordinator.Decide(st, c.GetName(), now)
	if d.Failover {
		if hold := f.restartingInPlace(c); hold != "" {
			d.Failover, d.Refusal = false, hold
		}
	}
	if d.Failover {
		f.a.logger.Warn("primary down: starting failover", "cluster", c.GetName(), "from", c.GetPrimary(), "to", d.Candidate, "reason", d.Reason)
		if _, err := f.start(f.ctx, c, d.Candidate, d.Reason, d.OldPrimaryLSN, d.EstimatedLossBytes, false, false, "regent/"+f.a.cfg.NodeName); err != nil {
			f.a.logger.Error("start failover", "cluster", c.GetName(), "err", err)
		}
		return
	}
	refusal := d.Refusal
	if !d.Down {
		refusal = ""
	}
	prev := c.GetRefusal()
	if refusal == prev {
		return
	}
	if now.Sub(f.refused[c.GetName()]) < refusalEvery {
		return // changed again within refusalEvery: the next tick after it commits what holds then
	}
	f.refused[c.GetName()] = now
	if _, err := f.a.store.Propose(f.ctx, regentv1.CommandType_COMMAND_TYPE_RECORD_REFUSAL,
		&regentv1.RecordRefusalCommand{Cluster: c.GetName(), Reason: refusal}, "regent/"+f.a.cfg.NodeName); err != nil {
		f.a.logger.Warn("record refusal", "cluster", c.GetName(), "err", err)
		return
	}
	if refusal != "" && refusalKind(refusal) != refusalKind(prev) {
		f.a.alerts.Notify(alert.Alert{Kind: "failover_declined", Severity: alert.SeverityCritical, Cluster: c.GetName(),
			Message: fmt.Sprintf("primary %s of %s looks down but regent will not fail over: %s", c.GetPrimary(), c.GetName(), refusal)})
	}
}

// refusalKind is a refusal without its figures (lags, sizes, elapsed times), so that an alert
// is raised when the reason changes, not when its numbers drift.
func refusalKind(r string) string {
	return strings.Map(func(c rune) rune {
		if c >= '0' && c <= '9' || c == '.' {
			return -1
		}
		return c
	}, r)
}

// restartingInPlace asks the keeper of c's primary, when it has one, whether it is restarting
// its crashed server in place; while it is, within the policy's primary_start_timeout, it
// returns the refusal that holds the failover off (else ""). A keeper that does not answer
// (its host is gone) holds nothing off. The keeper reports the restart from the moment it sees
// the postmaster gone (or is asked) until a few seconds after the server answers again, so the
// witnesses' stale "down" votes do not slip a failover in just as the restart completes.
func (f *failovers) restartingInPlace(c *regentv1.Cluster) string {
	n := nodeOf(c, c.GetPrimary())
	if n == nil || !hasKeeper(n) {
		return ""
	}
	pol := spec.WithDefaults(c.GetPolicy())
	every := time.Duration(pol.GetProbeIntervalMs()) * time.Millisecond
	f.mu.Lock()
	kc := f.keeperChecks[c.GetName()]
	gone := kc != nil && kc.node == n.GetName() && kc.failed && time.Since(kc.finished) < 2*every
	f.mu.Unlock()
	if gone {
		// Its host is likely gone, and a connection to it may hang rather than fail: the
		// background check already waited, so the decision does not wait again.
		f.a.logger.Info("primary's keeper did not answer moments ago; not holding the failover off", "cluster", c.GetName(), "node", n.GetName())
		return ""
	}
	ctx, cancel := context.WithTimeout(f.ctx, keeperCheckTimeout(pol))
	defer cancel()
	ks, err := keeperStatus(ctx, n)
	if err != nil {
		f.a.logger.Info("primary's keeper did not answer; not holding the failover off", "cluster", c.GetName(), "node", n.GetName(), "err", err)
		return ""
	}
	timeout := time.Duration(pol.GetPrimaryStartTimeoutMs()) * time.Millisecond
	elapsed := time.Duration(ks.GetRestartElapsedMs()) * time.Millisecond
	if !ks.GetRestarting() || ks.GetNode() != n.GetName() || elapsed >= timeout {
		return ""
	}
	return fmt.Sprintf("keeper restarting the primary in place (%.1fs of primary_start_timeout %v)", elapsed.Seconds(), timeout)
}

// keeperCheckTimeout bounds one KeeperStatus call of the leader's.
func keeperCheckTimeout(pol *regentv1.Policy) time.Duration {
	return max(2*time.Duration(pol.GetProbeTimeoutMs())*time.Millisecond, time.Second)
}

// checkKeeperEarly looks at the primary's keeper in the background, at most once per probe
// interval, while any witness's committed vote says the primary is unreachable. A keeper that
// does not answer then (its host gone, connections hanging) is known not to be restarting
// anything by the time down_after has passed, so restartingInPlace need not spend a timeout
// on it in the decision's path. Only the failure is used: whether a reachable keeper is
// restarting is always asked at the decision itself.
func (f *failovers) checkKeeperEarly(c *regentv1.Cluster) {
	n := nodeOf(c, c.GetPrimary())
	if n == nil || !hasKeeper(n) || !anyVoteDown(c, n.GetName()) {
		return
	}
	pol := spec.WithDefaults(c.GetPolicy())
	every := time.Duration(pol.GetProbeIntervalMs()) * time.Millisecond
	f.mu.Lock()
	kc := f.keeperChecks[c.GetName()]
	if kc == nil || kc.node != n.GetName() {
		kc = &keeperCheck{node: n.GetName()}
		f.keeperChecks[c.GetName()] = kc
	}
	due := !kc.running && time.Since(kc.finished) >= every
	if due {
		kc.running = true
	}
	f.mu.Unlock()
	if !due {
		return
	}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		ctx, cancel := context.WithTimeout(f.ctx, keeperCheckTimeout(pol))
		_, err := keeperStatus(ctx, n)
		cancel()
		f.mu.Lock()
		kc.running, kc.finished, kc.failed = false, time.Now(), err != nil
		f.mu.Unlock()
	}()
}

// anyVoteDown reports whether some committed vote says node is unreachable.
func anyVoteDown(c *regentv1.Cluster, node string) bool {
	for _, ns := range c.GetNodeStatus() {
		if ns.GetName() != node {
			continue
		}
		for _, v := range ns.GetVotes() {
			if !v.GetReachable() {
				return true
			}
		}
	}
	return false
}

// start commits a new saga and drives it. actor is the operator of a manual failover, or the
// witness itself for an automatic one; the FSM audits manual starts under that name.
func (f *failovers) start(ctx context.Context, c *regentv1.Cluster, to, reason string, oldLSN uint64, loss int64, manual, force bool, actor string) (*regentv1.FailoverEvent, error) {
	res, err := f.a.store.Propose(ctx, regentv1.CommandType_COMMAND_TYPE_START_FAILOVER, &regentv1.StartFailoverCommand{
		Cluster: c.GetName(), FromNode: c.GetPrimary(), ToNode: to, TriggerReason: reason, Term: f.a.store.Term(),
		Manual: manual, Force: force, OldPrimaryLsn: oldLSN, EstimatedLossBytes: loss,
	}, actor)
	if err != nil {
		return nil, err
	}
	if res.Err != nil {
		return nil, res.Err
	}
	f.a.alerts.Notify(alert.Alert{Kind: "failover_started", Severity: alert.SeverityCritical, Cluster: c.GetName(),
		Message: fmt.Sprintf("failover %d of %s started: %s → %s (%s)", res.Event.GetId(), c.GetName(), c.GetPrimary(), to, reason)})
	f.drive(res.Event.GetId())
	return res.Event, nil
}

// drive runs the saga of event id unless it already runs in this session.
func (f *failovers) drive(id uint64) {
	f.mu.Lock()
	if f.running[id] {
		f.mu.Unlock()
		return
	}
	f.running[id] = true
	f.mu.Unlock()
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		defer func() {
			f.mu.Lock()
			delete(f.running, id)
			f.mu.Unlock()
		}()
		saga := &coordinator.Saga{Leader: leaderAdapter{f.a}, World: f.a.world, Opts: f.a.sagaOpts}
		err := saga.Run(f.ctx, id)
		switch {
		case err == nil, f.ctx.Err() != nil:
		case errors.Is(err, coordinator.ErrNotLeading):
			f.a.logger.Warn("failover saga stopped: leadership lost", "event", id, "err", err)
		default:
			// Left open: the next decision tick drives it again.
			f.a.logger.Error("failover saga step failed; will retry", "event", id, "err", err)
		}
	}()
}

// onFailover starts an operator's failover (the API's handler on the leader).
func (a *Agent) onFailover(ctx context.Context, req *regentv1.FailoverRequest, actor string) (*regentv1.FailoverEvent, error) {
	a.obsMu.Lock()
	f := a.leaderFailovers
	a.obsMu.Unlock()
	if f == nil {
		return nil, fmt.Errorf("%w: leadership is still being established", store.ErrNoLeader)
	}
	st, _ := a.fsm.State()
	var c *regentv1.Cluster
	for _, cl := range st.GetClusters() {
		if cl.GetName() == req.GetCluster() {
			c = cl
		}
	}
	if c == nil {
		return nil, fmt.Errorf("%w: cluster %q", fsm.ErrNotFound, req.GetCluster())
	}
	var chans []*regentv1.ReplicationChannel
	for _, ch := range st.GetChannels() {
		if ch.GetCluster() == c.GetName() {
			chans = append(chans, ch)
		}
	}
	var oldLSN uint64
	for _, ns := range c.GetNodeStatus() {
		if ns.GetName() == c.GetPrimary() {
			oldLSN = ns.GetCurrentLsn()
		}
	}
	to, err := coordinator.ChooseCandidate(c, chans, oldLSN, req.GetForce(), req.GetTo())
	if err != nil {
		return nil, fmt.Errorf("%w: %v", fsm.ErrConflict, err)
	}
	var received uint64
	for _, ns := range c.GetNodeStatus() {
		if ns.GetName() == to {
			received = ns.GetReceivedLsn()
		}
	}
	loss := int64(0)
	if oldLSN > received {
		loss = int64(oldLSN - received)
	}
	reason := "manual failover by " + actor
	if req.GetReason() != "" {
		reason += ": " + req.GetReason()
	}
	// The saga outlives the request: it runs under the leader session, not the RPC.
	return f.start(f.ctx, c, to, reason, oldLSN, loss, true, req.GetForce(), actor)
}
