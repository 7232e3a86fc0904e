package coordinator

import (
	"math"
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
	"github.com/regentdb/regent/spec"
)

// Channels returns the batched per-interval entry, or nil when nothing differs from the
// committed state st:
//
//   - for every cluster whose channel set differs — figures, status, a channel to add or
//     one to drop — its complete channel set (and its name in clusters, so the FSM deletes
//     channels the set no longer has);
//   - every node whose facts differ from the committed ones, LSNs included.
//
// Clusters no witness has reported on yet are left alone. A channel's last_seen_at alone
// counts as a difference only once the committed one is SeenRefresh old; whenever the
// cluster is sent for another reason it carries the fresh value. See DESIGN.md for how
// each figure and the status are computed.
func (a *Aggregator) Channels(st *regentv1.State, now time.Time) *regentv1.UpdateChannelsCommand {
	byCluster := map[string][]*regentv1.ReplicationChannel{}
	for _, ch := range st.GetChannels() {
		byCluster[ch.GetCluster()] = append(byCluster[ch.GetCluster()], ch)
	}
	a.mu.RLock()
	defer a.mu.RUnlock()
	cmd := &regentv1.UpdateChannelsCommand{}
	for _, c := range st.GetClusters() {
		nodes := a.clusters[c.GetName()]
		if nodes == nil {
			continue
		}
		sys := clusterSystemID(c, nodes)
		wrong := map[string]bool{} // nodes that are not this cluster's servers
		var updates []*regentv1.NodeStatusUpdate
		for _, ns := range c.GetNodeStatus() {
			n := nodes[ns.GetName()]
			if n == nil {
				continue
			}
			d := n.derive(ns, sys)
			wrong[ns.GetName()] = d.GetWrongSystem()
			if factsDiffer(ns, d, true) {
				d.UpdatedAt = timestamppb.New(now)
				updates = append(updates, &regentv1.NodeStatusUpdate{Cluster: c.GetName(), Status: d})
			}
		}
		committed := byCluster[c.GetName()]
		if want, ok := clusterChannels(c, nodes, wrong, committed, now); ok && setDiffers(want, committed) {
			cmd.Clusters = append(cmd.Clusters, c.GetName())
			cmd.Channels = append(cmd.Channels, want...)
		}
		cmd.Nodes = append(cmd.Nodes, updates...)
	}
	if len(cmd.Clusters) == 0 && len(cmd.Nodes) == 0 {
		return nil
	}
	return cmd
}

// clusterChannels computes a cluster's channel set: one channel per region that holds a
// node other than the primary, sorted by secondary region. ok is false when the primary is
// not among the cluster's nodes (nothing sensible to say; the committed set is left alone).
// wrong marks the nodes derive found to be another cluster's server: they give no apply LSN.
func clusterChannels(c *regentv1.Cluster, nodes map[string]*nodeObs, wrong map[string]bool,
	committed []*regentv1.ReplicationChannel, now time.Time) (out []*regentv1.ReplicationChannel, ok bool) {
	var primaryRegion string
	regions := map[string][]string{}
	for _, n := range c.GetNodes() {
		if n.GetName() == c.GetPrimary() {
			primaryRegion, ok = n.GetRegion(), true
			continue
		}
		regions[n.GetRegion()] = append(regions[n.GetRegion()], n.GetName())
	}
	if !ok {
		return nil, false
	}
	pol := spec.WithDefaults(c.GetPolicy())
	prim := nodes[c.GetPrimary()]
	primaryLSN, havePrimaryLSN, primaryHB := uint64(0), false, time.Time{}
	if prim != nil {
		for _, w := range prim.witnesses {
			if s := &w.latest; s.reaches() {
				primaryLSN, havePrimaryLSN = max(primaryLSN, s.currentLSN), true
				if s.heartbeat.After(primaryHB) {
					primaryHB = s.heartbeat
				}
			}
		}
	}
	rate := prim.writeRate()
	if !havePrimaryLSN {
		// Nobody reaches the primary: keep the last committed figure.
		if ns := nodeStatus(c, c.GetPrimary()); ns != nil {
			primaryLSN = ns.GetCurrentLsn()
		}
	}

	names := make([]string, 0, len(regions))
	for r := range regions {
		names = append(names, r)
	}
	slices.Sort(names)
	for _, region := range names {
		old := findChannel(committed, primaryRegion, region)
		ch := &regentv1.ReplicationChannel{Cluster: c.GetName(), PrimaryRegion: primaryRegion, SecondaryRegion: region,
			PrimaryLsn: primaryLSN}
		if !havePrimaryLSN && old != nil {
			ch.PrimaryLsn = old.GetPrimaryLsn()
		}

		var applyLSN uint64
		var haveApply bool
		var standbyHB, lastSeen time.Time
		var standbys []*nodeObs
		for _, name := range regions[region] {
			n := nodes[name]
			standbys = append(standbys, n)
			if n == nil {
				continue
			}
			if n.lastReachable.After(lastSeen) {
				lastSeen = n.lastReachable
			}
			if wrong[name] {
				continue
			}
			for _, w := range n.witnesses {
				if s := &w.latest; s.reaches() {
					applyLSN, haveApply = max(applyLSN, s.replayLSN), true
					if s.heartbeat.After(standbyHB) {
						standbyHB = s.heartbeat
					}
				}
			}
		}
		if !haveApply && lastSeen.IsZero() && unmeasured(old) {
			// No standby of the region has been reached yet (a new cluster, a new region, a
			// leader that has not heard from it): what it has applied is unknown, not zero.
			// The figures stay zero and the status follows reachability alone, so that a
			// healthy fleet starting up raises no lag alert and no "recovered" after it.
			ch.Status = channelStatus(old, standbys, 0, pol, now)
			out = append(out, ch)
			continue
		}
		if !haveApply {
			applyLSN = old.GetApplyLsn()
		}
		ch.ApplyLsn = applyLSN
		if ch.PrimaryLsn > applyLSN {
			ch.LagBytes = ch.PrimaryLsn - applyLSN
		}

		switch {
		case applyLSN >= ch.PrimaryLsn:
			ch.LagSeconds = 0
		case !haveApply && !lastSeen.IsZero():
			// No standby of the region answers: what it holds is what it had when last
			// seen, so the lag is at least the time since (an extrapolation from the write
			// rate would swing with the rate and mean nothing).
			ch.LagSeconds = max(0, int64(now.Sub(lastSeen)/time.Second))
		case !primaryHB.IsZero() && !standbyHB.IsZero():
			// Both heartbeats were written by the primary's clock: skew between servers or
			// witnesses does not enter.
			ch.LagSeconds = max(0, int64(primaryHB.Sub(standbyHB)/time.Second))
		case rate > 0:
			ch.LagSeconds = int64(float64(ch.LagBytes) / rate)
		case old != nil:
			ch.LagSeconds = old.GetLagSeconds()
		}
		switch {
		case ch.LagBytes == 0:
			ch.EstimatedLagSeconds = 0
		case !haveApply:
			ch.EstimatedLagSeconds = float64(ch.LagSeconds)
		case rate > 0:
			ch.EstimatedLagSeconds = math.Round(float64(ch.LagBytes)/rate*1000) / 1000
		default:
			ch.EstimatedLagSeconds = float64(ch.LagSeconds)
		}

		if old != nil && old.GetLastSeenAt() != nil && old.GetLastSeenAt().AsTime().After(lastSeen) {
			lastSeen = old.GetLastSeenAt().AsTime()
		}
		if !lastSeen.IsZero() {
			ch.LastSeenAt = timestamppb.New(lastSeen)
		}
		ch.Status = channelStatus(old, standbys, ch.LagSeconds, pol, now)
		out = append(out, ch)
	}
	return out, true
}

// unmeasured reports whether a committed channel (nil: none) holds no measurement: it has no
// apply LSN and its region was never seen.
func unmeasured(old *regentv1.ReplicationChannel) bool {
	return old == nil || (old.GetApplyLsn() == 0 && old.GetLastSeenAt() == nil)
}

// channelStatus applies the seed's rules:
//
//   - failed: every standby of the region has been unhealthy (unreachable, wrong system or
//     not streaming) continuously for longer than down_after, judged by observation times;
//   - lagging: lag_seconds > 2 × lag_alert_threshold (the seed's monitor_lag);
//   - active otherwise.
//
// A committed rebuilding status belongs to the rejoin saga: it stays until a standby of the
// region is healthy and the lag is below lag_alert_threshold (the seed's
// sync_post_failover), then becomes active.
func channelStatus(old *regentv1.ReplicationChannel, standbys []*nodeObs, lagSeconds int64, pol *regentv1.Policy,
	now time.Time) regentv1.ChannelStatus {
	failed := len(standbys) > 0
	anyHealthy := false
	var since time.Time
	for _, n := range standbys {
		if n == nil || n.unhealthySince.IsZero() {
			failed = false
		} else if n.unhealthySince.After(since) {
			since = n.unhealthySince
		}
		if n != nil && n.healthy() {
			anyHealthy = true
		}
	}
	failed = failed && now.Sub(since) > time.Duration(pol.GetDownAfterMs())*time.Millisecond
	lagMs, thr := lagSeconds*1000, pol.GetLagAlertThresholdMs()

	if old.GetStatus() == regentv1.ChannelStatus_CHANNEL_STATUS_REBUILDING {
		if anyHealthy && lagMs < thr {
			return regentv1.ChannelStatus_CHANNEL_STATUS_ACTIVE
		}
		return regentv1.ChannelStatus_CHANNEL_STATUS_REBUILDING
	}
	switch {
	case failed:
		return regentv1.ChannelStatus_CHANNEL_STATUS_FAILED
	case lagMs > 2*thr:
		return regentv1.ChannelStatus_CHANNEL_STATUS_LAGGING
	default:
		return regentv1.ChannelStatus_CHANNEL_STATUS_ACTIVE
	}
}

// writeRate is the node's recent write rate in bytes per second: over the current-LSN
// history of the witness that covers the longest span (each witness's readings are on its
// own clock), or 0 when no witness has two readings.
func (n *nodeObs) writeRate() float64 {
	if n == nil {
		return 0
	}
	var span time.Duration
	rate := 0.0
	for _, w := range n.witnesses {
		if len(w.lsns) < 2 {
			continue
		}
		first, last := w.lsns[0], w.lsns[len(w.lsns)-1]
		if d := last.at.Sub(first.at); d > span {
			span, rate = d, float64(last.lsn-first.lsn)/d.Seconds()
		}
	}
	return rate
}

func nodeStatus(c *regentv1.Cluster, name string) *regentv1.NodeStatus {
	for _, ns := range c.GetNodeStatus() {
		if ns.GetName() == name {
			return ns
		}
	}
	return nil
}

func findChannel(chs []*regentv1.ReplicationChannel, primary, secondary string) *regentv1.ReplicationChannel {
	for _, ch := range chs {
		if ch.GetPrimaryRegion() == primary && ch.GetSecondaryRegion() == secondary {
			return ch
		}
	}
	return nil
}

// setDiffers reports whether the computed channel set differs from the committed one.
func setDiffers(want, committed []*regentv1.ReplicationChannel) bool {
	if len(want) != len(committed) {
		return true
	}
	for _, w := range want {
		old := findChannel(committed, w.GetPrimaryRegion(), w.GetSecondaryRegion())
		if old == nil {
			return true
		}
		if !sameFigures(w, old) {
			return true
		}
		if seenStale(w.GetLastSeenAt(), old.GetLastSeenAt()) {
			return true
		}
	}
	return false
}

// sameFigures compares everything but the id (assigned by the FSM) and last_seen_at (see
// seenStale).
func sameFigures(a, b *regentv1.ReplicationChannel) bool {
	return a.GetCluster() == b.GetCluster() && a.GetPrimaryRegion() == b.GetPrimaryRegion() &&
		a.GetSecondaryRegion() == b.GetSecondaryRegion() && a.GetStatus() == b.GetStatus() &&
		a.GetApplyLsn() == b.GetApplyLsn() && a.GetPrimaryLsn() == b.GetPrimaryLsn() && a.GetLagSeconds() == b.GetLagSeconds() &&
		a.GetLagBytes() == b.GetLagBytes() && a.GetEstimatedLagSeconds() == b.GetEstimatedLagSeconds()
}

// seenStale reports whether the committed last_seen_at must be refreshed to the fresh one.
func seenStale(fresh, committed *timestamppb.Timestamp) bool {
	switch {
	case fresh == nil:
		return false
	case committed == nil:
		return true
	default:
		return fresh.AsTime().Sub(committed.AsTime()) >= SeenRefresh
	}
}
