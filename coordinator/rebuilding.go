package coordinator

import (
	"math"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
	"github.com/regentdb/regent/spec"
)

// Rebuild is the catch-up of one old primary that has rejoined as a standby and is replaying
// what the new primary wrote since (its event's rejoin is rebuilding). See DESIGN.md,
// "Rejoin and rebuilding channels".
type Rebuild struct {
	// Cluster, Node and EventID name the old primary and the failover it rejoins after.
	Cluster, Node string
	EventID       uint64
	// PrimaryRegion → Region is the node's channel (the new primary's region → its own).
	PrimaryRegion, Region string
	// Streaming: the node's WAL receiver streams, on the new primary's timeline.
	Streaming bool
	// BytesBehind is the new primary's current LSN minus the node's replayed LSN (committed
	// node facts); 0 until the node streams.
	BytesBehind uint64
	// Rate is how fast BytesBehind shrinks (bytes per second, 0 when unknown or growing) and
	// ETA the seconds left at that rate (0 when unknown); RebuildTracker fills them.
	Rate, ETA float64
	// CaughtUp: the node streams, its channel has been committed as rebuilding, and the
	// channel's lag is below the cluster's lag_alert_threshold — the rejoin is done.
	CaughtUp bool
}

// RejoinEvents lists, in id order, the failover events whose old primary the rejoin flow
// owns: in each cluster with no failover running, the newest completed event of each old
// primary that is neither the cluster's primary now nor was promoted by a later event (then it
// came back some other way). Normally that is the cluster's latest event; a second failover
// before the first old primary rejoined leaves two.
func RejoinEvents(st *regentv1.State) []*regentv1.FailoverEvent {
	type key struct{ cluster, node string }
	open := map[string]bool{}
	newest := map[key]*regentv1.FailoverEvent{}
	for _, ev := range st.GetFailoverEvents() { // sorted by id
		switch ev.GetStep() {
		case regentv1.FailoverStep_FAILOVER_STEP_COMPLETED:
			newest[key{ev.GetCluster(), ev.GetFromNode()}] = ev
			delete(newest, key{ev.GetCluster(), ev.GetToNode()})
		case regentv1.FailoverStep_FAILOVER_STEP_ABORTED:
		default:
			open[ev.GetCluster()] = true
		}
	}
	var out []*regentv1.FailoverEvent
	for _, ev := range st.GetFailoverEvents() {
		if newest[key{ev.GetCluster(), ev.GetFromNode()}] != ev || open[ev.GetCluster()] {
			continue
		}
		for _, c := range st.GetClusters() {
			if c.GetName() == ev.GetCluster() && c.GetPrimary() != ev.GetFromNode() {
				out = append(out, ev)
			}
		}
	}
	return out
}

// Streaming reports whether node of c streams WAL on its primary's timeline, as the committed
// facts say: a standby of the current primary (facts from its days as a primary do not count).
// With strict the primary's timeline must be known.
func Streaming(c *regentv1.Cluster, node string, strict bool) bool {
	ns, prim := nodeStatus(c, node), nodeStatus(c, c.GetPrimary())
	if prim.GetTimeline() == 0 {
		return !strict && ns.GetWalReceiverStatus() == "streaming"
	}
	return ns.GetWalReceiverStatus() == "streaming" && ns.GetTimeline() == prim.GetTimeline()
}

// Rebuilds lists, from the committed state, every old primary whose rejoin is rebuilding (among
// RejoinEvents). Rate and ETA are left 0 (see RebuildTracker).
func Rebuilds(st *regentv1.State) []Rebuild {
	clusters := map[string]*regentv1.Cluster{}
	for _, c := range st.GetClusters() {
		clusters[c.GetName()] = c
	}
	var out []Rebuild
	for _, ev := range RejoinEvents(st) {
		c := clusters[ev.GetCluster()]
		if ev.GetRejoin().GetStatus() != regentv1.RejoinStatus_REJOIN_STATUS_REBUILDING {
			continue
		}
		rb := Rebuild{Cluster: c.GetName(), Node: ev.GetFromNode(), EventID: ev.GetId(),
			PrimaryRegion: specRegion(c, c.GetPrimary()), Region: specRegion(c, ev.GetFromNode())}
		old, prim := nodeStatus(c, ev.GetFromNode()), nodeStatus(c, c.GetPrimary())
		rb.Streaming = Streaming(c, ev.GetFromNode(), false)
		if rb.Streaming && prim.GetCurrentLsn() > old.GetReplayLsn() {
			rb.BytesBehind = prim.GetCurrentLsn() - old.GetReplayLsn()
		}
		var ch *regentv1.ReplicationChannel
		for _, x := range st.GetChannels() {
			if x.GetCluster() == c.GetName() && x.GetPrimaryRegion() == rb.PrimaryRegion && x.GetSecondaryRegion() == rb.Region {
				ch = x
			}
		}
		thr := spec.WithDefaults(c.GetPolicy()).GetLagAlertThresholdMs()
		rb.CaughtUp = rb.Streaming && ch.GetStatus() == regentv1.ChannelStatus_CHANNEL_STATUS_REBUILDING &&
			ch.GetLagSeconds()*1000 < thr
		out = append(out, rb)
	}
	return out
}

func specRegion(c *regentv1.Cluster, node string) string {
	for _, n := range c.GetNodes() {
		if n.GetName() == node {
			return n.GetRegion()
		}
	}
	return ""
}

// RebuildTracker keeps a short history of each rebuilding node's bytes behind to tell how
// fast it catches up. Like the Aggregator it does no I/O and reads no clock: times come in.
// Safe for concurrent use.
type RebuildTracker struct {
	mu      sync.Mutex
	samples map[string][]behindSample // cluster/node → samples within RateWindow
}

type behindSample struct {
	at     time.Time
	behind uint64
}

// NewRebuildTracker returns an empty tracker.
func NewRebuildTracker() *RebuildTracker {
	return &RebuildTracker{samples: map[string][]behindSample{}}
}

// Observe records each streaming rebuild's bytes behind at now, forgets the nodes no longer
// rebuilding, and returns rbs with Rate and ETA filled from the samples of the last RateWindow:
// the drop in bytes behind over the time between the oldest and the newest sample (0 when it
// did not drop), and BytesBehind / Rate. Figures are rounded (bytes per second to whole bytes,
// the ETA to tenths of a second) so that a steady catch-up does not rewrite them every interval.
func (t *RebuildTracker) Observe(rbs []Rebuild, now time.Time) []Rebuild {
	t.mu.Lock()
	defer t.mu.Unlock()
	keep := map[string]bool{}
	out := make([]Rebuild, len(rbs))
	for i, rb := range rbs {
		key := rb.Cluster + "/" + rb.Node
		keep[key] = true
		if !rb.Streaming {
			delete(t.samples, key)
			out[i] = rb
			continue
		}
		s := append(t.samples[key], behindSample{at: now, behind: rb.BytesBehind})
		for len(s) > 1 && now.Sub(s[0].at) > RateWindow {
			s = s[1:]
		}
		t.samples[key] = s
		first, last := s[0], s[len(s)-1]
		if d := last.at.Sub(first.at).Seconds(); d > 0 && first.behind > last.behind {
			rb.Rate = math.Round(float64(first.behind-last.behind) / d)
		}
		if rb.Rate > 0 && rb.BytesBehind > 0 {
			rb.ETA = math.Round(float64(rb.BytesBehind)/rb.Rate*10) / 10
		}
		out[i] = rb
	}
	for key := range t.samples {
		if !keep[key] {
			delete(t.samples, key)
		}
	}
	return out
}

// OverrideRebuilding returns the interval's channel command (cmd, nil when the aggregator
// found nothing to send) with the channel of every rebuild set to status rebuilding and its
// catch-up rate and ETA, until the rejoin is recorded caught up; after that the aggregator's
// rule turns a committed rebuilding channel active. A cluster the command does not carry is
// added with its committed channel set when the override changes any of them. A rebuild whose
// channel does not exist changes nothing. The result is nil when there is nothing to send.
func OverrideRebuilding(st *regentv1.State, cmd *regentv1.UpdateChannelsCommand, rbs []Rebuild) *regentv1.UpdateChannelsCommand {
	if len(rbs) == 0 {
		return cmd
	}
	if cmd == nil {
		cmd = &regentv1.UpdateChannelsCommand{}
	}
	sent := map[string]bool{}
	for _, c := range cmd.GetClusters() {
		sent[c] = true
	}
	for _, rb := range rbs {
		set := func(ch *regentv1.ReplicationChannel) bool {
			if ch.GetCluster() != rb.Cluster || ch.GetPrimaryRegion() != rb.PrimaryRegion || ch.GetSecondaryRegion() != rb.Region {
				return false
			}
			changed := ch.Status != regentv1.ChannelStatus_CHANNEL_STATUS_REBUILDING ||
				ch.CatchupRateBytesPerSecond != rb.Rate || ch.CatchupEtaSeconds != rb.ETA
			ch.Status, ch.CatchupRateBytesPerSecond, ch.CatchupEtaSeconds = regentv1.ChannelStatus_CHANNEL_STATUS_REBUILDING, rb.Rate, rb.ETA
			return changed
		}
		if sent[rb.Cluster] {
			for _, ch := range cmd.Channels {
				set(ch)
			}
			continue
		}
		var set2 []*regentv1.ReplicationChannel
		changed := false
		for _, ch := range st.GetChannels() {
			if ch.GetCluster() != rb.Cluster {
				continue
			}
			cp := proto.Clone(ch).(*regentv1.ReplicationChannel)
			if set(cp) {
				changed = true
			}
			set2 = append(set2, cp)
		}
		if changed {
			cmd.Clusters = append(cmd.Clusters, rb.Cluster)
			cmd.Channels = append(cmd.Channels, set2...)
			sent[rb.Cluster] = true
		}
	}
	if len(cmd.Clusters) == 0 && len(cmd.Nodes) == 0 {
		return nil
	}
	return cmd
}
