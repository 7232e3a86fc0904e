package agent

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/regentdb/regent/alert"
	"github.com/regentdb/regent/coordinator"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// Rejoin pacing: how often the leader looks at rejoins, how long one REJOIN instruction may
// take, the backoff after a failed attempt (doubling up to rejoinBackoffMax), and the least time
// between two progress records of one rebuilding node.
const (
	rejoinEvery       = 500 * time.Millisecond
	rejoinTimeout     = 3 * time.Minute
	rejoinBackoffMin  = 2 * time.Second
	rejoinBackoffMax  = time.Minute
	rejoinProgressGap = 2 * time.Second
)

// rejoins is the leader's rejoin work in one leader session: bringing the old primary of each
// completed failover (coordinator.RejoinEvents: normally the cluster's latest) back as a
// standby through its keeper, and following its catch-up until it is within
// lag_alert_threshold (see DESIGN.md, "Rejoin is the leader's").
type rejoins struct {
	leader  coordinator.Leader
	keepers keeperAPI
	alerts  interface{ Notify(alert.Alert) }
	log     *slog.Logger
	now     func() time.Time
	ctx     context.Context
	wg      sync.WaitGroup

	mu       sync.Mutex
	running  map[uint64]bool      // event → an attempt runs
	failures map[uint64]int       // event → failed attempts in this session
	next     map[uint64]time.Time // event → no attempt before
	progress map[uint64]time.Time // event → last progress record
}

// keeperAPI is how the leader reaches keepers (keeperClient; fakes in tests).
type keeperAPI interface {
	Status(ctx context.Context, n *regentv1.NodeSpec) (*regentv1.KeeperStatusResponse, error)
	Instruct(ctx context.Context, c *regentv1.Cluster, n *regentv1.NodeSpec, action regentv1.KeeperAction,
		term, eventID uint64, upstream *regentv1.NodeSpec) (*regentv1.InstructResponse, error)
}

// keeperClient is keeperAPI over gRPC to each node's keeper_addr.
type keeperClient struct{}

func (keeperClient) Status(ctx context.Context, n *regentv1.NodeSpec) (*regentv1.KeeperStatusResponse, error) {
	return keeperStatus(ctx, n)
}

func (keeperClient) Instruct(ctx context.Context, c *regentv1.Cluster, n *regentv1.NodeSpec, action regentv1.KeeperAction,
	term, eventID uint64, upstream *regentv1.NodeSpec) (*regentv1.InstructResponse, error) {
	return instructKeeper(ctx, c, n, action, term, eventID, upstream)
}

func newRejoins(ctx context.Context, leader coordinator.Leader, keepers keeperAPI, alerts interface{ Notify(alert.Alert) },
	log *slog.Logger) *rejoins {
	return &rejoins{leader: leader, keepers: keepers, alerts: alerts, log: log, now: time.Now, ctx: ctx,
		running: map[uint64]bool{}, failures: map[uint64]int{}, next: map[uint64]time.Time{}, progress: map[uint64]time.Time{}}
}

// rejoinAsLeader runs until ctx (the leader session) ends.
func (a *Agent) rejoinAsLeader(ctx context.Context) {
	r := newRejoins(ctx, leaderAdapter{a}, keeperClient{}, a.alerts, a.logger)
	defer r.wg.Wait()
	tick := time.NewTicker(rejoinEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		r.step(r.leader.State())
	}
}

// step looks at the old primary of every event the rejoin flow owns
// (coordinator.RejoinEvents) once: records a pending rejoin when it has a keeper, starts an
// attempt when one is due, and records the catch-up of rebuilding ones.
func (r *rejoins) step(st *regentv1.State) {
	clusters := map[string]*regentv1.Cluster{}
	for _, c := range st.GetClusters() {
		clusters[c.GetName()] = c
	}
	rebuilds := map[uint64]coordinator.Rebuild{}
	for _, rb := range coordinator.Rebuilds(st) {
		rebuilds[rb.EventID] = rb
	}
	for _, ev := range coordinator.RejoinEvents(st) {
		c := clusters[ev.GetCluster()]
		old := nodeOf(c, ev.GetFromNode())
		if old == nil || !hasKeeper(old) {
			continue
		}
		switch ev.GetRejoin().GetStatus() {
		case regentv1.RejoinStatus_REJOIN_STATUS_UNSPECIFIED:
			if coordinator.Streaming(c, old.GetName(), true) {
				// Already a standby of the primary (rejoined by hand, before it had a keeper):
				// a REJOIN would only restart it, and its old WAL is gone.
				r.record(ev, &regentv1.Rejoin{Status: regentv1.RejoinStatus_REJOIN_STATUS_CAUGHT_UP, Method: "external",
					Detail: fmt.Sprintf("%s already streamed from %s when the leader looked: rejoined outside regent; the data loss stays the estimate",
						old.GetName(), c.GetPrimary())}, nil)
				continue
			}
			r.record(ev, &regentv1.Rejoin{Status: regentv1.RejoinStatus_REJOIN_STATUS_PENDING,
				Detail: fmt.Sprintf("waiting for the keeper of %s (%s)", old.GetName(), old.GetKeeperAddr())}, nil)
		case regentv1.RejoinStatus_REJOIN_STATUS_PENDING, regentv1.RejoinStatus_REJOIN_STATUS_FAILED:
			r.attempt(c, ev, old)
		case regentv1.RejoinStatus_REJOIN_STATUS_REBUILDING:
			if rb, ok := rebuilds[ev.GetId()]; ok {
				r.follow(st, ev, rb)
			}
		}
	}
}

// record commits a RECORD_REJOIN for ev with the leader's term; extra sets the loss figures.
func (r *rejoins) record(ev *regentv1.FailoverEvent, rj *regentv1.Rejoin, extra func(*regentv1.RecordRejoinCommand)) bool {
	cmd := &regentv1.RecordRejoinCommand{EventId: ev.GetId(), Term: r.leader.Term(), Rejoin: rj}
	if extra != nil {
		extra(cmd)
	}
	res, err := r.leader.Propose(r.ctx, regentv1.CommandType_COMMAND_TYPE_RECORD_REJOIN, cmd)
	switch {
	case err != nil:
		r.log.Warn("record rejoin", "event", ev.GetId(), "err", err)
		return false
	case res.Err != nil:
		r.log.Error("rejoin record rejected", "event", ev.GetId(), "err", res.Err)
		return false
	}
	return true
}

// attempt instructs the old primary's keeper to REJOIN, in the background, when no attempt
// runs and the backoff after the last failure has passed.
func (r *rejoins) attempt(c *regentv1.Cluster, ev *regentv1.FailoverEvent, old *regentv1.NodeSpec) {
	id := ev.GetId()
	r.mu.Lock()
	due := !r.running[id] && !r.now().Before(r.next[id])
	if due {
		r.running[id] = true
	}
	r.mu.Unlock()
	if !due {
		return
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		ok, why, instructed := r.instruct(c, ev, old)
		r.mu.Lock()
		delete(r.running, id)
		backoff := time.Duration(0)
		switch {
		case ok:
			delete(r.failures, id)
		case !instructed:
			// The keeper was not asked (it does not answer, or rejoins already): asking
			// again costs one status call, so keep asking every rejoinBackoffMin.
			backoff = rejoinBackoffMin
			r.next[id] = r.now().Add(backoff)
		default:
			r.failures[id]++
			backoff = min(rejoinBackoffMin<<min(r.failures[id]-1, 10), rejoinBackoffMax)
			r.next[id] = r.now().Add(backoff)
		}
		r.mu.Unlock()
		if ok || r.ctx.Err() != nil {
			return
		}
		r.log.Warn("rejoin did not complete; will retry", "cluster", c.GetName(), "node", old.GetName(), "event", id,
			"why", why, "retry_in", backoff)
		detail := fmt.Sprintf("%s; retrying in %s", why, backoff.Round(time.Second))
		if cur := ev.GetRejoin(); cur.GetDetail() != detail {
			rj := proto.Clone(cur).(*regentv1.Rejoin)
			rj.Status, rj.Detail = regentv1.RejoinStatus_REJOIN_STATUS_PENDING, detail
			r.record(ev, rj, nil)
		}
	}()
}

// instruct asks the old primary's keeper for its status, then to REJOIN with the token
// (leader term, event id) and the cluster's current primary as upstream, and records the
// keeper's exact figures. It reports whether the rejoin was recorded, else why not, and
// whether the keeper was instructed at all.
func (r *rejoins) instruct(c *regentv1.Cluster, ev *regentv1.FailoverEvent, old *regentv1.NodeSpec) (ok bool, why string, instructed bool) {
	up := nodeOf(c, c.GetPrimary())
	if up == nil {
		return false, fmt.Sprintf("the primary %s is not in the cluster's spec", c.GetPrimary()), false
	}
	if err := r.leader.VerifyLeader(r.ctx); err != nil {
		return false, fmt.Sprintf("not leading: %v", err), false
	}
	sctx, cancel := context.WithTimeout(r.ctx, 5*time.Second)
	ks, err := r.keepers.Status(sctx, old)
	cancel()
	switch {
	case err != nil:
		return false, fmt.Sprintf("the keeper of %s does not answer: %v", old.GetName(), err), false
	case ks.GetRejoining():
		return false, fmt.Sprintf("the keeper of %s is rejoining already (an earlier instruction)", old.GetName()), false
	}
	term := r.leader.Term()
	r.log.Info("instructing rejoin", "cluster", c.GetName(), "node", old.GetName(), "upstream", up.GetName(), "term", term, "event", ev.GetId())
	ictx, cancel := context.WithTimeout(r.ctx, rejoinTimeout)
	resp, err := r.keepers.Instruct(ictx, c, old, regentv1.KeeperAction_KEEPER_ACTION_REJOIN, term, ev.GetId(), up)
	cancel()
	switch {
	case err != nil:
		return false, fmt.Sprintf("REJOIN refused: %v", err), true
	case !resp.GetDone():
		return false, fmt.Sprintf("REJOIN did not complete: %s", resp.GetDetail()), true
	}
	rep := resp.GetRejoin()
	if rep == nil {
		// A keeper that predates RejoinReport: done, but no figures to trust.
		rep = &regentv1.RejoinReport{Ok: true, DataLossBytes: -1, LostTransactions: -1,
			Error: "the keeper sent no rejoin report (an older keeper?); its detail: " + resp.GetDetail()}
	}
	rj := &regentv1.Rejoin{Status: regentv1.RejoinStatus_REJOIN_STATUS_REBUILDING, Method: rep.GetMethod(),
		Detail: fmt.Sprintf("%s onto %s; streaming, catching up", rep.GetMethod(), up.GetName())}
	if n := rep.GetError(); n != "" {
		rj.Detail += "; " + n
	}
	recorded := r.record(ev, rj, func(cmd *regentv1.RecordRejoinCommand) {
		if rep.GetDataLossBytes() >= 0 {
			cmd.DataLossBytes = proto.Int64(rep.GetDataLossBytes())
		}
		if rep.GetLostTransactions() >= 0 && rep.GetDataLossBytes() >= 0 {
			cmd.LostTransactions = proto.Int64(rep.GetLostTransactions())
		}
		cmd.ForkLsn, cmd.FinalLsn = rep.GetForkLsn(), rep.GetFinalLsn()
	})
	if !recorded {
		return false, "the rejoin completed but could not be recorded", true
	}
	loss := "unknown"
	if rep.GetDataLossBytes() >= 0 {
		loss = fmt.Sprintf("%d bytes, %d transactions", rep.GetDataLossBytes(), rep.GetLostTransactions())
	}
	r.alerts.Notify(alert.Alert{Kind: "rejoined", Severity: alert.SeverityWarning, Cluster: c.GetName(),
		Message: fmt.Sprintf("old primary %s of %s rejoined as a standby of %s (%s); data loss of failover %d: %s",
			old.GetName(), c.GetName(), up.GetName(), rep.GetMethod(), ev.GetId(), loss)})
	return true, "", true
}

// follow records a rebuilding node's catch-up (bytes behind, and the rate and ETA the channel
// figures carry) at most every rejoinProgressGap, and caught up once it is.
func (r *rejoins) follow(st *regentv1.State, ev *regentv1.FailoverEvent, rb coordinator.Rebuild) {
	rj := proto.Clone(ev.GetRejoin()).(*regentv1.Rejoin)
	if rb.CaughtUp {
		rj.Status, rj.BytesBehind, rj.RateBytesPerSecond, rj.EtaSeconds = regentv1.RejoinStatus_REJOIN_STATUS_CAUGHT_UP, 0, 0, 0
		rj.Detail = fmt.Sprintf("caught up: within lag_alert_threshold of the primary (%s)", rj.GetMethod())
		if r.record(ev, rj, nil) {
			r.log.Info("rejoined node caught up", "cluster", ev.GetCluster(), "node", ev.GetFromNode(), "event", ev.GetId())
		}
		return
	}
	for _, ch := range st.GetChannels() {
		if ch.GetCluster() == rb.Cluster && ch.GetPrimaryRegion() == rb.PrimaryRegion && ch.GetSecondaryRegion() == rb.Region {
			rj.RateBytesPerSecond, rj.EtaSeconds = ch.GetCatchupRateBytesPerSecond(), ch.GetCatchupEtaSeconds()
		}
	}
	rj.BytesBehind = rb.BytesBehind
	if proto.Equal(rj, ev.GetRejoin()) {
		return
	}
	r.mu.Lock()
	due := r.now().Sub(r.progress[ev.GetId()]) >= rejoinProgressGap
	if due {
		r.progress[ev.GetId()] = r.now()
	}
	r.mu.Unlock()
	if due {
		r.record(ev, rj, nil)
	}
}
