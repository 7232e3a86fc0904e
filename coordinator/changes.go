package coordinator

import (
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// Changes compares the aggregated view with the committed state st and returns what must be
// committed at once, or nil when nothing did change:
//
//   - votes that flipped: a witness's latest observation's reachability differs from its
//     committed vote on that node, or it has no committed vote yet (since = the time of the
//     first observation with the new value, error = its error class);
//   - nodes whose role, timeline, system identifier, WAL receiver status, upstream,
//     replay_paused or wrong_system changed. The update carries all the node's facts (LSNs
//     too) with updated_at = now.
//
// LSN-only changes are left to Channels. Clusters and nodes that st does not hold are
// skipped, as are nodes no witness has reported yet. The result depends only on the
// observations held, st and now — not on the order reports arrived in from different
// witnesses at equal times.
func (a *Aggregator) Changes(st *regentv1.State, now time.Time) *regentv1.RecordObservationsCommand {
	a.mu.RLock()
	defer a.mu.RUnlock()
	cmd := &regentv1.RecordObservationsCommand{}
	for _, c := range st.GetClusters() {
		nodes := a.clusters[c.GetName()]
		if nodes == nil {
			continue
		}
		sys := clusterSystemID(c, nodes)
		for _, ns := range c.GetNodeStatus() {
			n := nodes[ns.GetName()]
			if n == nil {
				continue
			}
			for _, w := range n.witnesses {
				if old := committedVote(ns, w.witness); old != nil && old.GetReachable() == w.vote {
					continue
				}
				v := &regentv1.Vote{Witness: w.witness, Reachable: w.vote, Since: timestamppb.New(w.voteSince)}
				if !w.vote {
					v.Error = w.latest.errorClass
				}
				cmd.Votes = append(cmd.Votes, &regentv1.VoteUpdate{Cluster: c.GetName(), Node: ns.GetName(), Vote: v})
			}
			if d := n.derive(ns, sys); factsDiffer(ns, d, false) {
				d.UpdatedAt = timestamppb.New(now)
				cmd.Nodes = append(cmd.Nodes, &regentv1.NodeStatusUpdate{Cluster: c.GetName(), Status: d})
			}
		}
	}
	if len(cmd.Votes) == 0 && len(cmd.Nodes) == 0 {
		return nil
	}
	return cmd
}

func committedVote(ns *regentv1.NodeStatus, witness string) *regentv1.Vote {
	for _, v := range ns.GetVotes() {
		if v.GetWitness() == witness {
			return v
		}
	}
	return nil
}

// derive returns the node's facts as the observations show them, starting from the
// committed status (without votes and updated_at):
//
//   - wrong_system is set when any witness's latest observation says so; such observations
//     contribute nothing else.
//   - Among the latest observations that reached the node, the newest decides the role
//     (in_recovery → replica, else primary); among those agreeing with it, the one with the
//     highest LSN (current LSN for a primary, replay LSN for a replica; then received LSN,
//     then the newest) gives timeline, LSNs, system identifier, WAL receiver, upstream and
//     replay_paused.
//   - When no witness reaches the node, the committed facts stay: a node nobody can see
//     does not flap to unknown.
//   - A committed role FENCED or REJOINING is never replaced here: the failover and rejoin
//     sagas set and clear those; the other facts still follow the observations.
//   - A node whose trusted answers carry a system identifier other than the cluster's
//     (clusterSys, when known), or that only ever answers as another cluster's server (every
//     reaching witness's probe said wrong_system), is flagged wrong_system with role UNKNOWN:
//     another cluster's primary is never taken for one of ours, even before the probes learn
//     the cluster's identifier.
func (n *nodeObs) derive(committed *regentv1.NodeStatus, clusterSys uint64) *regentv1.NodeStatus {
	d := &regentv1.NodeStatus{
		Name: committed.GetName(), Role: committed.GetRole(), Timeline: committed.GetTimeline(),
		CurrentLsn: committed.GetCurrentLsn(), ReceivedLsn: committed.GetReceivedLsn(), ReplayLsn: committed.GetReplayLsn(),
		SystemIdentifier: committed.GetSystemIdentifier(), WalReceiverStatus: committed.GetWalReceiverStatus(),
		Upstream: committed.GetUpstream(), ReplayPaused: committed.GetReplayPaused(),
		WrongSystem: n.wrongSystem(),
	}
	var newest *sample
	for _, w := range n.witnesses {
		if s := &w.latest; s.reaches() && (newest == nil || s.at.After(newest.at)) {
			newest = s
		}
	}
	if newest == nil {
		if d.WrongSystem && d.Role != regentv1.NodeRole_NODE_ROLE_FENCED && d.Role != regentv1.NodeRole_NODE_ROLE_REJOINING {
			d.Role = regentv1.NodeRole_NODE_ROLE_UNKNOWN // only another cluster's server answers there
		}
		return d
	}
	var best *sample
	for _, w := range n.witnesses {
		s := &w.latest
		if !s.reaches() || s.inRecovery != newest.inRecovery {
			continue
		}
		if best == nil || betterLSN(s, best) {
			best = s
		}
	}
	role := regentv1.NodeRole_NODE_ROLE_PRIMARY
	if best.inRecovery {
		role = regentv1.NodeRole_NODE_ROLE_REPLICA
	}
	if clusterSys != 0 && best.systemID != 0 && best.systemID != clusterSys {
		d.WrongSystem = true
		role = regentv1.NodeRole_NODE_ROLE_UNKNOWN
	}
	if r := committed.GetRole(); r != regentv1.NodeRole_NODE_ROLE_FENCED && r != regentv1.NodeRole_NODE_ROLE_REJOINING {
		d.Role = role
	}
	d.Timeline, d.CurrentLsn, d.ReceivedLsn, d.ReplayLsn = best.timeline, best.currentLSN, best.receivedLSN, best.replayLSN
	d.SystemIdentifier, d.WalReceiverStatus, d.Upstream, d.ReplayPaused = best.systemID, best.walReceiver, best.upstream, best.replayPaused
	return d
}

// betterLSN orders observations of one node in the same role: higher relevant LSN, then
// higher received LSN, then newer. Witnesses are visited in name order, so full ties go to
// the first name.
func betterLSN(s, than *sample) bool {
	rel := func(x *sample) uint64 {
		if x.inRecovery {
			return x.replayLSN
		}
		return x.currentLSN
	}
	if a, b := rel(s), rel(than); a != b {
		return a > b
	}
	if s.receivedLSN != than.receivedLSN {
		return s.receivedLSN > than.receivedLSN
	}
	return s.at.After(than.at)
}

// factsDiffer reports whether d differs from the committed status in the facts Changes
// commits at once, or, with lsns, in any fact (votes and updated_at aside).
func factsDiffer(c, d *regentv1.NodeStatus, lsns bool) bool {
	if c.GetRole() != d.GetRole() || c.GetTimeline() != d.GetTimeline() || c.GetSystemIdentifier() != d.GetSystemIdentifier() ||
		c.GetWalReceiverStatus() != d.GetWalReceiverStatus() || c.GetUpstream() != d.GetUpstream() ||
		c.GetReplayPaused() != d.GetReplayPaused() || c.GetWrongSystem() != d.GetWrongSystem() {
		return true
	}
	return lsns && (c.GetCurrentLsn() != d.GetCurrentLsn() || c.GetReceivedLsn() != d.GetReceivedLsn() ||
		c.GetReplayLsn() != d.GetReplayLsn())
}

// clusterSystemID is the cluster's PostgreSQL system identifier: what the designated primary
// answers with now (from a witness that reaches it and does not flag it), else what was
// committed for it; 0 when unknown.
func clusterSystemID(c *regentv1.Cluster, nodes map[string]*nodeObs) uint64 {
	if n := nodes[c.GetPrimary()]; n != nil && !n.wrongSystem() {
		var newest *sample
		for _, w := range n.witnesses {
			if s := &w.latest; s.reaches() && s.systemID != 0 && (newest == nil || s.at.After(newest.at)) {
				newest = s
			}
		}
		if newest != nil {
			return newest.systemID
		}
	}
	for _, ns := range c.GetNodeStatus() {
		if ns.GetName() == c.GetPrimary() && !ns.GetWrongSystem() {
			return ns.GetSystemIdentifier()
		}
	}
	return 0
}
