// Package coordinator holds the Raft leader's decision logic. This part turns witnesses'
// probe observations into the two observation commands of the replicated state: votes and
// node facts that changed (RecordObservationsCommand, committed at once) and the batched
// per-interval channel figures (UpdateChannelsCommand). It is pure: no I/O, no clock — the
// caller passes the committed state and the time — so every rule is table-tested. See
// DESIGN.md in this directory.
package coordinator

import (
	"slices"
	"strings"
	"sync"
	"time"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// Error classes of regentv1.Observation.error_class that the aggregator interprets.
const (
	// ErrorClassWrongSystem marks an observation of a server that answered with another
	// cluster's system identifier: it is not the node it was asked for, so the observation
	// counts as unreachable and its facts are not the node's.
	ErrorClassWrongSystem = "wrong_system"
	// WalReceiverStreaming is the WAL receiver status of a standby that receives WAL.
	WalReceiverStreaming = "streaming"
)

// RateWindow is how much history of a primary's current LSN the aggregator keeps to compute
// its write rate (bytes per second), measured on each witness's own clock.
const RateWindow = 10 * time.Second

// SeenRefresh is how stale a committed channel's last_seen_at may become before Channels
// refreshes it on its own; when other figures change it is refreshed with them. Without
// this bound an idle, healthy channel would need a log entry every interval.
const SeenRefresh = 10 * time.Second

// Aggregator keeps the latest observation per (cluster, node, witness) that witnesses
// reported, with what it needs to compute votes, node facts and channel figures: when each
// witness's vote last flipped, since when a node has been continuously unhealthy as a
// standby, and a short history of current LSNs for the write rate.
//
// Add, Forget and Retain may be called concurrently with each other and with Changes and
// Channels. Observation times are the witnesses' clocks; the leader's time only enters as
// the now argument of Changes and Channels.
type Aggregator struct {
	mu       sync.RWMutex
	clusters map[string]map[string]*nodeObs // cluster → node → observations
}

// NewAggregator returns an empty Aggregator.
func NewAggregator() *Aggregator {
	return &Aggregator{clusters: map[string]map[string]*nodeObs{}}
}

// sample is the part of an Observation the aggregator uses; it owns no proto, so callers
// may reuse their observations after Add.
type sample struct {
	at           time.Time
	reachable    bool
	errorClass   string
	inRecovery   bool
	currentLSN   uint64
	receivedLSN  uint64
	replayLSN    uint64
	timeline     uint32
	systemID     uint64
	walReceiver  string
	upstream     string
	replayPaused bool
	heartbeat    time.Time // zero when the observation carried none
}

func (s *sample) wrongSystem() bool { return s.errorClass == ErrorClassWrongSystem }

// reaches reports whether the observation reached the node itself: reachable, and not
// another cluster's server.
func (s *sample) reaches() bool { return s.reachable && !s.wrongSystem() }

// lsnPoint is one (time, current LSN) reading of a node acting as primary.
type lsnPoint struct {
	at  time.Time
	lsn uint64
}

// witnessObs is what one witness reported about one node.
type witnessObs struct {
	witness string
	latest  sample
	// vote is latest.reaches(); voteSince is the time of the first observation with that
	// value.
	vote      bool
	voteSince time.Time
	// lsns holds current-LSN readings while the node answers as a primary, covering at most
	// RateWindow before the newest one.
	lsns []lsnPoint
}

// nodeObs is what all witnesses reported about one node.
type nodeObs struct {
	witnesses []*witnessObs // sorted by witness name
	// Standby health over the merged stream of observations (see DESIGN.md): a healthy
	// observation reaches the node, finds it streaming, and no witness currently sees a
	// wrong system there.
	lastHealthy    time.Time // newest healthy observation
	unhealthySince time.Time // first unhealthy observation after lastHealthy; zero if none
	lastReachable  time.Time // newest observation that reached the node
}

func (n *nodeObs) witness(name string) *witnessObs {
	i, ok := slices.BinarySearchFunc(n.witnesses, name, func(w *witnessObs, s string) int { return strings.Compare(w.witness, s) })
	if ok {
		return n.witnesses[i]
	}
	w := &witnessObs{witness: name}
	n.witnesses = slices.Insert(n.witnesses, i, w)
	return w
}

// wrongSystem reports whether any witness's latest observation found another cluster's
// server at the node's address.
func (n *nodeObs) wrongSystem() bool {
	for _, w := range n.witnesses {
		if w.latest.wrongSystem() {
			return true
		}
	}
	return false
}

// healthy reports whether the node is currently a healthy standby: seen streaming, and no
// unhealthy observation since.
func (n *nodeObs) healthy() bool { return !n.lastHealthy.IsZero() && n.unhealthySince.IsZero() }

// Add records observations that witness reported and returns how many it kept. It ignores
// observations without a cluster, node or valid time, and any observation older than the
// one it already holds from that witness for that node (reports can arrive out of order).
// Add is safe for concurrent use.
func (a *Aggregator) Add(witness string, obs []*regentv1.Observation) int {
	if witness == "" {
		return 0
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	kept := 0
	for _, o := range obs {
		if o.GetCluster() == "" || o.GetNode() == "" || o.GetAt() == nil || o.GetAt().CheckValid() != nil {
			continue
		}
		nodes := a.clusters[o.GetCluster()]
		if nodes == nil {
			nodes = map[string]*nodeObs{}
			a.clusters[o.GetCluster()] = nodes
		}
		n := nodes[o.GetNode()]
		if n == nil {
			n = &nodeObs{}
			nodes[o.GetNode()] = n
		}
		if n.add(witness, toSample(o)) {
			kept++
		}
	}
	return kept
}

func toSample(o *regentv1.Observation) sample {
	s := sample{
		at: o.GetAt().AsTime(), reachable: o.GetReachable(), errorClass: o.GetErrorClass(), inRecovery: o.GetInRecovery(),
		currentLSN: o.GetCurrentLsn(), receivedLSN: o.GetReceivedLsn(), replayLSN: o.GetReplayLsn(), timeline: o.GetTimeline(),
		systemID: o.GetSystemIdentifier(), walReceiver: o.GetWalReceiverStatus(), upstream: o.GetUpstream(),
		replayPaused: o.GetReplayPaused(),
	}
	if hb := o.GetHeartbeatAt(); hb != nil && hb.CheckValid() == nil {
		s.heartbeat = hb.AsTime()
	}
	return s
}

// add records one observation of the node by witness; false if it is older than the one
// held.
func (n *nodeObs) add(witness string, s sample) bool {
	w := n.witness(witness)
	prev, first := w.latest, w.latest.at.IsZero()
	if !first && s.at.Before(prev.at) {
		return false
	}
	w.latest = s

	if v := s.reaches(); first || v != w.vote {
		w.vote, w.voteSince = v, s.at
	}

	switch {
	case s.reaches() && !s.inRecovery:
		if k := len(w.lsns); k > 0 && (s.currentLSN < w.lsns[k-1].lsn || s.timeline != prev.timeline) {
			w.lsns = w.lsns[:0] // the LSN went back (a rewind, a new server): a new history
		}
		w.lsns = append(w.lsns, lsnPoint{s.at, s.currentLSN})
		cut := 0
		for cut < len(w.lsns)-1 && s.at.Sub(w.lsns[cut].at) > RateWindow {
			cut++
		}
		w.lsns = slices.Delete(w.lsns, 0, cut)
	case s.reaches():
		w.lsns = w.lsns[:0] // in recovery: not writing
	}

	if s.reaches() && s.at.After(n.lastReachable) {
		n.lastReachable = s.at
	}
	if s.reaches() && s.walReceiver == WalReceiverStreaming && !n.wrongSystem() {
		if s.at.After(n.lastHealthy) {
			n.lastHealthy = s.at
		}
		if !n.unhealthySince.IsZero() && !s.at.Before(n.unhealthySince) {
			n.unhealthySince = time.Time{}
		}
	} else if s.at.After(n.lastHealthy) && (n.unhealthySince.IsZero() || s.at.Before(n.unhealthySince)) {
		n.unhealthySince = s.at
	}
	return true
}

// Forget drops everything known about a cluster (call it when the cluster is deleted).
func (a *Aggregator) Forget(cluster string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.clusters, cluster)
}

// Retain drops what is known about clusters and nodes that st does not hold, so that
// observations of deleted clusters, removed nodes or misspelt names do not accumulate.
func (a *Aggregator) Retain(st *regentv1.State) {
	want := make(map[string]*regentv1.Cluster, len(st.GetClusters()))
	for _, c := range st.GetClusters() {
		want[c.GetName()] = c
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for name, nodes := range a.clusters {
		c, ok := want[name]
		if !ok {
			delete(a.clusters, name)
			continue
		}
		for node := range nodes {
			if !slices.ContainsFunc(c.GetNodes(), func(n *regentv1.NodeSpec) bool { return n.GetName() == node }) {
				delete(nodes, node)
			}
		}
	}
}
