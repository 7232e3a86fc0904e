package fsm

import (
	"fmt"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
	"github.com/regentdb/regent/spec"
)

// The two observation commands are written by the leader's coordinator, not by operators:
// RECORD_OBSERVATIONS carries votes that flipped and node facts that changed, committed at
// once; UPDATE_CHANNELS is the batched per-interval entry with channel figures and LSNs.
//
// Both are tolerant of the world moving under them: an update naming a cluster, node or
// (for channels) cluster that no longer exists is skipped — the cluster may have been
// deleted between the observation and the commit — and the rest of the batch applies. Both
// are strict about their own shape: a malformed update (empty names, nil vote or status,
// invalid time, unknown enum value) rejects the whole command. And both are cheap to
// repeat: an update equal to what is stored changes nothing and tells watchers nothing, so
// a leader that re-sends identical figures does not churn the state or the Watch streams.
// Neither is audited: they are observations, not operator actions.

// recordObservations applies votes that flipped and node facts that changed.
func recordObservations(tx *txn, cmd *regentv1.RecordObservationsCommand) error {
	if err := checkVoteUpdates(cmd.GetVotes()); err != nil {
		return err
	}
	if err := checkNodeUpdates("nodes", cmd.GetNodes()); err != nil {
		return err
	}
	changed := map[string]bool{}
	for _, u := range cmd.GetVotes() {
		if setVote(tx, u) {
			changed[u.GetCluster()] = true
		}
	}
	for _, u := range cmd.GetNodes() {
		if setNodeStatus(tx, u) {
			changed[u.GetCluster()] = true
		}
	}
	emitClusters(tx, changed)
	return nil
}

// updateChannels upserts channel figures by (cluster, primary_region, secondary_region),
// replaces the channel sets of the clusters the command lists, and applies node facts.
func updateChannels(tx *txn, cmd *regentv1.UpdateChannelsCommand) error {
	keys := make(map[channelKey]int, len(cmd.GetChannels()))
	for i, ch := range cmd.GetChannels() {
		field := fmt.Sprintf("channels[%d]", i)
		if ch == nil {
			return &spec.FieldError{Field: field, Msg: "is empty"}
		}
		for _, f := range []struct{ name, v string }{{"cluster", ch.GetCluster()},
			{"primary_region", ch.GetPrimaryRegion()}, {"secondary_region", ch.GetSecondaryRegion()}} {
			if strings.TrimSpace(f.v) == "" {
				return &spec.FieldError{Field: field + "." + f.name, Msg: "is required"}
			}
		}
		if _, ok := regentv1.ChannelStatus_name[int32(ch.GetStatus())]; !ok {
			return &spec.FieldError{Field: field + ".status", Msg: fmt.Sprintf("%d is not a channel status", int32(ch.GetStatus()))}
		}
		if err := checkTime(field+".last_seen_at", ch.GetLastSeenAt()); err != nil {
			return err
		}
		k := keyOf(ch)
		if j, dup := keys[k]; dup {
			return &spec.FieldError{Field: field, Msg: fmt.Sprintf("channel %s repeats channels[%d]", k, j)}
		}
		keys[k] = i
	}
	for i, c := range cmd.GetClusters() {
		if strings.TrimSpace(c) == "" {
			return &spec.FieldError{Field: fmt.Sprintf("clusters[%d]", i), Msg: "is empty"}
		}
	}
	if err := checkNodeUpdates("nodes", cmd.GetNodes()); err != nil {
		return err
	}

	s := tx.state
	// Drop the channels of replaced clusters that the batch does not name. Only clusters
	// that exist are replaced: deleting a cluster already removed its channels.
	replace := map[string]bool{}
	for _, c := range cmd.GetClusters() {
		if _, ok := findCluster(s, c); ok {
			replace[c] = true
		}
	}
	if len(replace) > 0 {
		kept := s.Channels[:0]
		for _, ch := range s.Channels {
			if _, inBatch := keys[keyOf(ch)]; replace[ch.GetCluster()] && !inBatch {
				tx.emit(&regentv1.WatchEvent{Kind: KindChannel, Key: fmt.Sprint(ch.GetId()), Deleted: true, Channel: ch})
				continue
			}
			kept = append(kept, ch)
		}
		clear(s.Channels[len(kept):])
		s.Channels = kept
	}

	byKey := make(map[channelKey]int, len(s.Channels))
	for i, ch := range s.Channels {
		byKey[keyOf(ch)] = i
	}
	for _, in := range cmd.GetChannels() {
		if _, ok := findCluster(s, in.GetCluster()); !ok {
			continue
		}
		ch := proto.Clone(in).(*regentv1.ReplicationChannel)
		if i, ok := byKey[keyOf(ch)]; ok {
			ch.Id = s.Channels[i].GetId()
			if proto.Equal(ch, s.Channels[i]) {
				continue
			}
			s.Channels[i] = ch
		} else {
			if s.NextChannelId == 0 {
				s.NextChannelId = 1
			}
			ch.Id = s.NextChannelId
			s.NextChannelId++
			// Ids only grow, so appending keeps the channels sorted by id.
			s.Channels = append(s.Channels, ch)
			byKey[keyOf(ch)] = len(s.Channels) - 1
		}
		tx.emit(&regentv1.WatchEvent{Kind: KindChannel, Key: fmt.Sprint(ch.GetId()), Channel: proto.Clone(ch).(*regentv1.ReplicationChannel)})
	}

	changed := map[string]bool{}
	for _, u := range cmd.GetNodes() {
		if setNodeStatus(tx, u) {
			changed[u.GetCluster()] = true
		}
	}
	emitClusters(tx, changed)
	return nil
}

// channelKey is a channel's natural key, unique in the state.
type channelKey struct{ cluster, primary, secondary string }

func (k channelKey) String() string {
	return fmt.Sprintf("%s %s→%s", k.cluster, k.primary, k.secondary)
}

func keyOf(ch *regentv1.ReplicationChannel) channelKey {
	return channelKey{ch.GetCluster(), ch.GetPrimaryRegion(), ch.GetSecondaryRegion()}
}

func checkVoteUpdates(us []*regentv1.VoteUpdate) error {
	for i, u := range us {
		field := fmt.Sprintf("votes[%d]", i)
		switch {
		case u == nil:
			return &spec.FieldError{Field: field, Msg: "is empty"}
		case strings.TrimSpace(u.GetCluster()) == "":
			return &spec.FieldError{Field: field + ".cluster", Msg: "is required"}
		case strings.TrimSpace(u.GetNode()) == "":
			return &spec.FieldError{Field: field + ".node", Msg: "is required"}
		case u.GetVote() == nil:
			return &spec.FieldError{Field: field + ".vote", Msg: "is required"}
		case strings.TrimSpace(u.GetVote().GetWitness()) == "":
			return &spec.FieldError{Field: field + ".vote.witness", Msg: "is required"}
		}
		if err := checkTime(field+".vote.since", u.GetVote().GetSince()); err != nil {
			return err
		}
	}
	return nil
}

func checkNodeUpdates(what string, us []*regentv1.NodeStatusUpdate) error {
	for i, u := range us {
		field := fmt.Sprintf("%s[%d]", what, i)
		switch {
		case u == nil:
			return &spec.FieldError{Field: field, Msg: "is empty"}
		case strings.TrimSpace(u.GetCluster()) == "":
			return &spec.FieldError{Field: field + ".cluster", Msg: "is required"}
		case u.GetStatus() == nil:
			return &spec.FieldError{Field: field + ".status", Msg: "is required"}
		case strings.TrimSpace(u.GetStatus().GetName()) == "":
			return &spec.FieldError{Field: field + ".status.name", Msg: "is required"}
		}
		if _, ok := regentv1.NodeRole_name[int32(u.GetStatus().GetRole())]; !ok {
			return &spec.FieldError{Field: field + ".status.role", Msg: fmt.Sprintf("%d is not a node role", int32(u.GetStatus().GetRole()))}
		}
		if err := checkTime(field+".status.updated_at", u.GetStatus().GetUpdatedAt()); err != nil {
			return err
		}
	}
	return nil
}

// checkTime accepts an unset time or a valid one.
func checkTime(field string, ts *timestamppb.Timestamp) error {
	if ts == nil {
		return nil
	}
	if err := ts.CheckValid(); err != nil {
		return &spec.FieldError{Field: field, Msg: err.Error()}
	}
	return nil
}

// findNodeStatus returns the position of the named node's status in c.NodeStatus.
func findNodeStatus(c *regentv1.Cluster, node string) (int, bool) {
	return slices.BinarySearchFunc(c.GetNodeStatus(), node, func(n *regentv1.NodeStatus, name string) int {
		return strings.Compare(n.GetName(), name)
	})
}

// setVote sets or replaces one witness's vote on one node, keeping votes sorted by witness.
// It reports whether anything changed: a vote whose reachable and error equal the stored
// one's is the same vote (its since, when the value last flipped, stays).
func setVote(tx *txn, u *regentv1.VoteUpdate) bool {
	ci, ok := findCluster(tx.state, u.GetCluster())
	if !ok {
		return false
	}
	c := tx.state.Clusters[ci]
	ni, ok := findNodeStatus(c, u.GetNode())
	if !ok {
		return false
	}
	ns := c.NodeStatus[ni]
	v := proto.Clone(u.GetVote()).(*regentv1.Vote)
	if v.Since == nil {
		v.Since = tx.now()
	}
	i, found := slices.BinarySearchFunc(ns.Votes, v.GetWitness(), func(o *regentv1.Vote, w string) int {
		return strings.Compare(o.GetWitness(), w)
	})
	if found {
		old := ns.Votes[i]
		if old.GetReachable() == v.GetReachable() && old.GetError() == v.GetError() {
			return false
		}
		ns.Votes[i] = v
		return true
	}
	ns.Votes = slices.Insert(ns.Votes, i, v)
	return true
}

// sagaRole reports whether role belongs to the failover and rejoin sagas (fenced, rejoining).
func sagaRole(role regentv1.NodeRole) bool {
	return role == regentv1.NodeRole_NODE_ROLE_FENCED || role == regentv1.NodeRole_NODE_ROLE_REJOINING
}

// setNodeStatus replaces a node's observed facts (everything but its name and votes; the role
// too, unless it or the committed one is a saga's: sagaRole). It
// reports whether anything changed; updated_at alone is not a change, so it records when
// the facts last changed (the update's updated_at, or the envelope's time when unset).
func setNodeStatus(tx *txn, u *regentv1.NodeStatusUpdate) bool {
	ci, ok := findCluster(tx.state, u.GetCluster())
	if !ok {
		return false
	}
	c := tx.state.Clusters[ci]
	ni, ok := findNodeStatus(c, u.GetStatus().GetName())
	if !ok {
		return false
	}
	old := c.NodeStatus[ni]
	ns := proto.Clone(u.GetStatus()).(*regentv1.NodeStatus)
	if sagaRole(old.GetRole()) || sagaRole(ns.GetRole()) {
		// Only ADVANCE_FAILOVER and RECORD_REJOIN set or clear these: a batch the leader
		// computed before such a commit must not undo it.
		ns.Role = old.GetRole()
	}
	ns.Votes = old.Votes
	ns.UpdatedAt = old.UpdatedAt
	if proto.Equal(ns, old) {
		return false
	}
	ns.UpdatedAt = u.GetStatus().GetUpdatedAt()
	if ns.UpdatedAt == nil {
		ns.UpdatedAt = tx.now()
	} else {
		ns.UpdatedAt = proto.Clone(ns.UpdatedAt).(*timestamppb.Timestamp)
	}
	c.NodeStatus[ni] = ns
	return true
}

// emitClusters emits one cluster event per changed cluster, in name order.
func emitClusters(tx *txn, changed map[string]bool) {
	names := make([]string, 0, len(changed))
	for n := range changed {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		if i, ok := findCluster(tx.state, n); ok {
			c := tx.state.Clusters[i]
			tx.emit(&regentv1.WatchEvent{Kind: KindCluster, Key: c.GetName(), Cluster: proto.Clone(c).(*regentv1.Cluster)})
		}
	}
}
