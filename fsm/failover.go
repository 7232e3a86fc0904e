package fsm

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
	"github.com/regentdb/regent/spec"
)

// MaxEventNotes is how many notes a failover event keeps; when an ADVANCE_FAILOVER note goes
// over it, the oldest notes are dropped.
const MaxEventNotes = 50

// DNSToken is the token a failover's DNS publish writes beside the record and that the FSM
// stores in Cluster.dns_token once the publish succeeded: the saga's owning term and its
// event id. The next publish carries it as its prerequisite, so a stale leader's update fails
// at the DNS server.
func DNSToken(term, eventID uint64) string {
	return fmt.Sprintf("regent term=%d event=%d", term, eventID)
}

// StepName is the lower-case name of a failover step as operators read it ("decided",
// "fenced", …), or "step N" for a value this build does not know.
func StepName(s regentv1.FailoverStep) string {
	if s > regentv1.FailoverStep_FAILOVER_STEP_UNSPECIFIED && s <= regentv1.FailoverStep_FAILOVER_STEP_ABORTED {
		return strings.ToLower(strings.TrimPrefix(s.String(), "FAILOVER_STEP_"))
	}
	return fmt.Sprintf("step %d", int32(s))
}

// nextStep is the one step a saga may move to from each step (besides aborting).
var nextStep = map[regentv1.FailoverStep]regentv1.FailoverStep{
	regentv1.FailoverStep_FAILOVER_STEP_DECIDED:   regentv1.FailoverStep_FAILOVER_STEP_FENCED,
	regentv1.FailoverStep_FAILOVER_STEP_FENCED:    regentv1.FailoverStep_FAILOVER_STEP_PROMOTED,
	regentv1.FailoverStep_FAILOVER_STEP_PROMOTED:  regentv1.FailoverStep_FAILOVER_STEP_REPOINTED,
	regentv1.FailoverStep_FAILOVER_STEP_REPOINTED: regentv1.FailoverStep_FAILOVER_STEP_PUBLISHED,
	regentv1.FailoverStep_FAILOVER_STEP_PUBLISHED: regentv1.FailoverStep_FAILOVER_STEP_COMPLETED,
}

// isOpen reports whether a failover event is still running (neither completed nor aborted).
func isOpen(ev *regentv1.FailoverEvent) bool {
	s := ev.GetStep()
	return s != regentv1.FailoverStep_FAILOVER_STEP_COMPLETED && s != regentv1.FailoverStep_FAILOVER_STEP_ABORTED
}

// openEvent returns the cluster's failover event that is still running, or nil. START_FAILOVER
// keeps it to at most one per cluster.
func openEvent(s *regentv1.State, cluster string) *regentv1.FailoverEvent {
	for _, ev := range s.FailoverEvents {
		if ev.GetCluster() == cluster && isOpen(ev) {
			return ev
		}
	}
	return nil
}

func findEvent(s *regentv1.State, id uint64) (int, bool) {
	return slices.BinarySearchFunc(s.FailoverEvents, id, func(e *regentv1.FailoverEvent, id uint64) int {
		return cmp.Compare(e.GetId(), id)
	})
}

func findNodeSpec(c *regentv1.Cluster, name string) *regentv1.NodeSpec {
	for _, n := range c.GetNodes() {
		if n.GetName() == name {
			return n
		}
	}
	return nil
}

func nodeNames(c *regentv1.Cluster) string {
	names := make([]string, 0, len(c.GetNodes()))
	for _, n := range c.GetNodes() {
		names = append(names, n.GetName())
	}
	return strings.Join(names, ", ")
}

func emitCluster(tx *txn, c *regentv1.Cluster) {
	tx.emit(&regentv1.WatchEvent{Kind: KindCluster, Key: c.GetName(), Cluster: proto.Clone(c).(*regentv1.Cluster)})
}

func emitEvent(tx *txn, ev *regentv1.FailoverEvent) {
	tx.emit(&regentv1.WatchEvent{Kind: KindFailoverEvent, Key: fmt.Sprint(ev.GetId()),
		FailoverEvent: proto.Clone(ev).(*regentv1.FailoverEvent)})
}

// setPaused pauses or resumes automatic failover of a cluster. Every request is audited (it
// is an operator action), even one that changes nothing; watchers hear of a change only.
func setPaused(tx *txn, cmd *regentv1.SetPausedCommand) error {
	if strings.TrimSpace(cmd.GetCluster()) == "" {
		return &spec.FieldError{Field: "cluster", Msg: "is required"}
	}
	i, ok := findCluster(tx.state, cmd.GetCluster())
	if !ok {
		return fmt.Errorf("cluster %q: %w; list clusters with `regent status`", cmd.GetCluster(), ErrNotFound)
	}
	c := tx.state.Clusters[i]
	reason := ""
	if cmd.GetPaused() {
		reason = cmd.GetReason()
	}
	if c.GetPaused() != cmd.GetPaused() || c.GetPauseReason() != reason {
		c.Paused, c.PauseReason = cmd.GetPaused(), reason
		emitCluster(tx, c)
	}
	tx.res.Cluster = proto.Clone(c).(*regentv1.Cluster)
	if cmd.GetPaused() {
		tx.audit("cluster.pause", c.GetName(), cmd.GetReason())
	} else {
		tx.audit("cluster.resume", c.GetName(), cmd.GetReason())
	}
	return nil
}

// recordRefusal records why the coordinator declined an automatic failover. The coordinator
// races deletes, so a cluster that no longer exists is skipped; an equal reason is a no-op
// (refusal_at keeps saying since when it holds). Not audited: it is not an operator action.
func recordRefusal(tx *txn, cmd *regentv1.RecordRefusalCommand) error {
	if strings.TrimSpace(cmd.GetCluster()) == "" {
		return &spec.FieldError{Field: "cluster", Msg: "is required"}
	}
	i, ok := findCluster(tx.state, cmd.GetCluster())
	if !ok {
		return nil
	}
	c := tx.state.Clusters[i]
	if c.GetRefusal() == cmd.GetReason() {
		return nil
	}
	c.Refusal = cmd.GetReason()
	if c.Refusal == "" {
		c.RefusalAt = nil
	} else {
		c.RefusalAt = tx.now()
	}
	emitCluster(tx, c)
	return nil
}

// startFailover opens a failover saga at step DECIDED.
func startFailover(tx *txn, cmd *regentv1.StartFailoverCommand) error {
	for _, f := range []struct{ name, v string }{{"cluster", cmd.GetCluster()}, {"from_node", cmd.GetFromNode()}, {"to_node", cmd.GetToNode()}} {
		if strings.TrimSpace(f.v) == "" {
			return &spec.FieldError{Field: f.name, Msg: "is required"}
		}
	}
	if cmd.GetTerm() == 0 {
		return &spec.FieldError{Field: "term", Msg: "is required: the proposing leader's Raft term owns the saga"}
	}
	if cmd.GetEstimatedLossBytes() < 0 {
		return &spec.FieldError{Field: "estimated_loss_bytes", Msg: fmt.Sprintf("%d must not be negative", cmd.GetEstimatedLossBytes())}
	}
	s := tx.state
	ci, ok := findCluster(s, cmd.GetCluster())
	if !ok {
		return fmt.Errorf("cluster %q: %w; list clusters with `regent status`", cmd.GetCluster(), ErrNotFound)
	}
	c := s.Clusters[ci]
	to := findNodeSpec(c, cmd.GetToNode())
	switch {
	case to == nil:
		return &spec.FieldError{Field: "to_node", Msg: fmt.Sprintf("%q is not a node of cluster %q (nodes: %s)", cmd.GetToNode(), c.GetName(), nodeNames(c))}
	case cmd.GetToNode() == cmd.GetFromNode():
		return &spec.FieldError{Field: "to_node", Msg: fmt.Sprintf("%q is the node being failed over from; name another node", cmd.GetToNode())}
	}
	if cmd.GetFromNode() != c.GetPrimary() {
		return fmt.Errorf("cluster %q: failover from %q, but the current primary is %q: %w; decide again from the current state",
			c.GetName(), cmd.GetFromNode(), c.GetPrimary(), ErrConflict)
	}
	if ev := openEvent(s, c.GetName()); ev != nil {
		return fmt.Errorf("cluster %q: failover %d of %s is still at step %s: %w; wait until it completes or aborts",
			c.GetName(), ev.GetId(), ev.GetCluster(), StepName(ev.GetStep()), ErrConflict)
	}
	from := findNodeSpec(c, cmd.GetFromNode())

	if s.NextEventId == 0 {
		s.NextEventId = 1
	}
	loss := cmd.GetEstimatedLossBytes()
	ev := &regentv1.FailoverEvent{
		Id:            s.NextEventId,
		Cluster:       c.GetName(),
		FromRegion:    from.GetRegion(),
		ToRegion:      to.GetRegion(),
		TriggerReason: cmd.GetTriggerReason(),
		StartedAt:     tx.now(),
		DataLossBytes: &loss,
		FromNode:      from.GetName(),
		ToNode:        to.GetName(),
		Step:          regentv1.FailoverStep_FAILOVER_STEP_DECIDED,
		Term:          cmd.GetTerm(),
		Steps:         []*regentv1.StepTime{{Step: regentv1.FailoverStep_FAILOVER_STEP_DECIDED, At: tx.now()}},
		Manual:        cmd.GetManual(),
		Force:         cmd.GetForce(),
		OldPrimaryLsn: cmd.GetOldPrimaryLsn(),

		Switchover:          cmd.GetSwitchover(),
		SwitchoverTimeoutMs: cmd.GetSwitchoverTimeoutMs(),
	}
	s.NextEventId++
	// Ids only grow, so appending keeps the events sorted by id.
	s.FailoverEvents = append(s.FailoverEvents, ev)
	tx.res.Created = true
	tx.res.Event = proto.Clone(ev).(*regentv1.FailoverEvent)
	emitEvent(tx, ev)

	// A failover under way is the answer to whatever was declined before.
	if c.GetRefusal() != "" {
		c.Refusal, c.RefusalAt = "", nil
		emitCluster(tx, c)
	}
	if cmd.GetManual() {
		kind := "failover"
		if ev.GetSwitchover() {
			kind = "switchover"
		}
		detail := fmt.Sprintf("%s %d: %s (%s) → %s (%s)", kind, ev.GetId(), ev.GetFromNode(), ev.GetFromRegion(), ev.GetToNode(), ev.GetToRegion())
		if ev.GetForce() {
			detail += ", forced past the lag gate"
		}
		if ev.GetTriggerReason() != "" {
			detail += "; " + ev.GetTriggerReason()
		}
		tx.audit("cluster."+kind, c.GetName(), detail)
	}
	return nil
}

// advanceFailover moves a saga one step forward (or aborts it) and applies the step's
// effects. See DESIGN.md, "Pause, refusals and failover sagas".
func advanceFailover(tx *txn, cmd *regentv1.AdvanceFailoverCommand) error {
	if cmd.GetEventId() == 0 {
		return &spec.FieldError{Field: "event_id", Msg: "is required"}
	}
	if cmd.GetTerm() == 0 {
		return &spec.FieldError{Field: "term", Msg: "is required: the committing leader's Raft term"}
	}
	step := cmd.GetStep()
	if _, known := regentv1.FailoverStep_name[int32(step)]; !known || step == regentv1.FailoverStep_FAILOVER_STEP_UNSPECIFIED {
		return &spec.FieldError{Field: "step", Msg: fmt.Sprintf("%s is not a step a saga can advance to (fenced, promoted, repointed, published, completed or aborted)", StepName(step))}
	}
	if cmd.DataLossBytes != nil && cmd.GetDataLossBytes() < 0 {
		return &spec.FieldError{Field: "data_loss_bytes", Msg: fmt.Sprintf("%d must not be negative", cmd.GetDataLossBytes())}
	}
	s := tx.state
	ei, ok := findEvent(s, cmd.GetEventId())
	if !ok {
		return fmt.Errorf("failover %d: %w; list failovers with `regent events`", cmd.GetEventId(), ErrNotFound)
	}
	ev := s.FailoverEvents[ei]
	if cmd.GetTerm() < ev.GetTerm() {
		return fmt.Errorf("failover %d of %s: term %d is older than the saga's owner %d: %w; a newer leader drives it now",
			ev.GetId(), ev.GetCluster(), cmd.GetTerm(), ev.GetTerm(), ErrConflict)
	}
	cur := ev.GetStep()
	if step == cur && cmd.GetTerm() == ev.GetTerm() {
		// A resumed saga may repeat its last commit: the first one stands.
		tx.res.Event = proto.Clone(ev).(*regentv1.FailoverEvent)
		return nil
	}
	switch {
	case !isOpen(ev):
		return fmt.Errorf("failover %d of %s is already %s; it cannot move to %s: %w",
			ev.GetId(), ev.GetCluster(), StepName(cur), StepName(step), ErrConflict)
	case step == regentv1.FailoverStep_FAILOVER_STEP_ABORTED:
		if cur != regentv1.FailoverStep_FAILOVER_STEP_DECIDED && cur != regentv1.FailoverStep_FAILOVER_STEP_FENCED {
			return fmt.Errorf("failover %d of %s is at step %s: after promotion a failover cannot be aborted, only finished: %w",
				ev.GetId(), ev.GetCluster(), StepName(cur), ErrConflict)
		}
	case step != nextStep[cur]:
		return fmt.Errorf("failover %d of %s is at step %s; the next step is %s, not %s: %w",
			ev.GetId(), ev.GetCluster(), StepName(cur), StepName(nextStep[cur]), StepName(step), ErrConflict)
	}
	switch step {
	case regentv1.FailoverStep_FAILOVER_STEP_FENCED:
		if strings.TrimSpace(cmd.GetFenceMethod()) == "" {
			return &spec.FieldError{Field: "fence_method", Msg: "is required for step fenced: say how the old primary was fenced"}
		}
	case regentv1.FailoverStep_FAILOVER_STEP_ABORTED:
		if strings.TrimSpace(cmd.GetAbortReason()) == "" {
			return &spec.FieldError{Field: "abort_reason", Msg: "is required for step aborted: say why the failover was given up"}
		}
	}
	var c *regentv1.Cluster
	if ci, ok := findCluster(s, ev.GetCluster()); ok {
		c = s.Clusters[ci]
	}
	if step == regentv1.FailoverStep_FAILOVER_STEP_PROMOTED && c != nil && findNodeSpec(c, ev.GetToNode()) == nil {
		return fmt.Errorf("failover %d of %s: node %q is no longer in the cluster's spec: %w",
			ev.GetId(), ev.GetCluster(), ev.GetToNode(), ErrConflict)
	}

	// Checked; now change.
	ev.Term = cmd.GetTerm()
	ev.Step = step
	ev.Steps = append(ev.Steps, &regentv1.StepTime{Step: step, At: tx.now()})
	if cmd.DataLossBytes != nil {
		v := cmd.GetDataLossBytes()
		ev.DataLossBytes = &v
		ev.DataLossExact = cmd.GetDataLossExact()
	}
	if cmd.GetFinalLsn() != 0 {
		ev.FinalLsn = cmd.GetFinalLsn()
	}
	if cmd.GetForkLsn() != 0 {
		ev.ForkLsn = cmd.GetForkLsn()
	}
	if n := cmd.GetNote(); n != "" {
		ev.Notes = append(ev.Notes, n)
		if over := len(ev.Notes) - MaxEventNotes; over > 0 {
			ev.Notes = slices.Delete(ev.Notes, 0, over)
		}
	}
	var changedChannels []*regentv1.ReplicationChannel
	var deletedChannels []*regentv1.ReplicationChannel
	clusterChanged := false
	switch step {
	case regentv1.FailoverStep_FAILOVER_STEP_FENCED:
		ev.FenceMethod = cmd.GetFenceMethod()
	case regentv1.FailoverStep_FAILOVER_STEP_PROMOTED:
		ev.PromotedLsn, ev.PromotedTimeline = cmd.GetPromotedLsn(), cmd.GetPromotedTimeline()
		if ev.GetSwitchover() && ev.Rejoin == nil {
			ev.Rejoin = &regentv1.Rejoin{Node: ev.GetFromNode(), Status: regentv1.RejoinStatus_REJOIN_STATUS_CAUGHT_UP, Method: "follow",
				StartedAt: tx.now(), FinishedAt: tx.now(),
				Detail: "switchover: the old primary was shut down cleanly and follows the new primary without a rewind"}
		}
		if c != nil {
			promote(c, ev)
			clusterChanged = true
			changedChannels, deletedChannels = swapChannels(s, ev)
		}
	case regentv1.FailoverStep_FAILOVER_STEP_PUBLISHED:
		ev.Published, ev.PublishError = cmd.GetPublished(), cmd.GetPublishError()
		if ev.Published && c != nil {
			if tok := DNSToken(ev.GetTerm(), ev.GetId()); c.DnsToken != tok {
				c.DnsToken = tok
				clusterChanged = true
			}
		}
	case regentv1.FailoverStep_FAILOVER_STEP_COMPLETED:
		ev.CompletedAt = tx.now()
	case regentv1.FailoverStep_FAILOVER_STEP_ABORTED:
		ev.AbortReason = cmd.GetAbortReason()
	}

	tx.res.Event = proto.Clone(ev).(*regentv1.FailoverEvent)
	emitEvent(tx, ev)
	for _, ch := range deletedChannels {
		tx.emit(&regentv1.WatchEvent{Kind: KindChannel, Key: fmt.Sprint(ch.GetId()), Deleted: true, Channel: ch})
	}
	for _, ch := range changedChannels {
		tx.emit(&regentv1.WatchEvent{Kind: KindChannel, Key: fmt.Sprint(ch.GetId()), Channel: proto.Clone(ch).(*regentv1.ReplicationChannel)})
	}
	if clusterChanged {
		emitCluster(tx, c)
	}
	return nil
}

// promote records a promotion in the cluster: to_node is the primary, and the roles of the
// two nodes say so (the old primary stays fenced until the rejoin flow takes it over; after a
// switchover it is already a standby following the candidate, so it is a replica, and the
// event's rejoin says it followed without a rewind). The primary's lease starts a new epoch:
// witnesses grant the old primary's keeper nothing more.
func promote(c *regentv1.Cluster, ev *regentv1.FailoverEvent) {
	c.Primary = ev.GetToNode()
	c.LeaseEpoch++
	if i, ok := findNodeStatus(c, ev.GetFromNode()); ok {
		c.NodeStatus[i].Role = regentv1.NodeRole_NODE_ROLE_FENCED
		if ev.GetSwitchover() {
			c.NodeStatus[i].Role = regentv1.NodeRole_NODE_ROLE_REPLICA
		}
	}
	if i, ok := findNodeStatus(c, ev.GetToNode()); ok {
		c.NodeStatus[i].Role = regentv1.NodeRole_NODE_ROLE_PRIMARY
	}
}

// swapChannels turns the cluster's channels around after a promotion from region F
// (ev.from_region) to region T (ev.to_region), in place and keeping ids, as the seed's
// trigger_failover UPDATE does:
//
//   - the channel F → T becomes T → F;
//   - every other channel F → X becomes T → X (F → F, the old primary's region's other
//     standbys, becomes T → F as well);
//   - channels whose primary region is not F are left alone.
//
// Where two channels would end up with the same key — F → T and F → F both become T → F,
// or a swapped channel meets a leftover one already keyed T → X — one survives and the
// others are deleted: the former F → T first (it is the seed's row), then any swapped
// channel, then the lowest id. Figures and statuses stay as they were (the aggregator
// recomputes them at its next interval), except the channel now pointing at F: the old
// primary is down or fenced, so it is set failed until the rejoin flow rebuilds it.
//
// It returns the channels it changed and those it deleted, each in id order.
func swapChannels(s *regentv1.State, ev *regentv1.FailoverEvent) (changed, deleted []*regentv1.ReplicationChannel) {
	from, to, cluster := ev.GetFromRegion(), ev.GetToRegion(), ev.GetCluster()
	type cand struct {
		ch      *regentv1.ReplicationChannel
		key     channelKey
		swapped bool
		reverse bool // the former F → T
	}
	var cands []cand
	for _, ch := range s.Channels {
		if ch.GetCluster() != cluster {
			continue
		}
		c := cand{ch: ch, key: keyOf(ch)}
		if ch.GetPrimaryRegion() == from {
			c.swapped = true
			c.reverse = ch.GetSecondaryRegion() == to
			sec := ch.GetSecondaryRegion()
			if c.reverse {
				sec = from
			}
			c.key = channelKey{cluster, to, sec}
		}
		cands = append(cands, c)
	}
	// better reports whether a should survive rather than b when both want one key.
	better := func(a, b cand) bool {
		if a.reverse != b.reverse {
			return a.reverse
		}
		if a.swapped != b.swapped {
			return a.swapped
		}
		return a.ch.GetId() < b.ch.GetId()
	}
	winner := map[channelKey]cand{}
	for _, c := range cands {
		if w, ok := winner[c.key]; !ok || better(c, w) {
			winner[c.key] = c
		}
	}
	drop := map[uint64]bool{}
	for _, c := range cands {
		w := winner[c.key]
		if w.ch != c.ch {
			drop[c.ch.GetId()] = true
			deleted = append(deleted, c.ch)
			continue
		}
		if !c.swapped {
			continue
		}
		status := c.ch.GetStatus()
		if c.key.secondary == from {
			status = regentv1.ChannelStatus_CHANNEL_STATUS_FAILED
		}
		if keyOf(c.ch) == c.key && c.ch.GetStatus() == status {
			continue // a failover within one region moves no channel
		}
		c.ch.PrimaryRegion, c.ch.SecondaryRegion, c.ch.Status = c.key.primary, c.key.secondary, status
		changed = append(changed, c.ch)
	}
	if len(drop) > 0 {
		kept := s.Channels[:0]
		for _, ch := range s.Channels {
			if ch.GetCluster() == cluster && drop[ch.GetId()] {
				continue
			}
			kept = append(kept, ch)
		}
		clear(s.Channels[len(kept):])
		s.Channels = kept
	}
	return changed, deleted
}
