package fsm

import (
	"fmt"
	"math"

	"google.golang.org/protobuf/proto"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
	"github.com/regentdb/regent/spec"
)

// recordRejoin records the progress of a completed failover's old primary coming back as a
// standby: the event's rejoin, and — when the old primary's keeper measured them — the exact
// data loss, the lost transactions and the fork and final LSNs. See DESIGN.md, "Rejoin".
func recordRejoin(tx *txn, cmd *regentv1.RecordRejoinCommand) error {
	if cmd.GetEventId() == 0 {
		return &spec.FieldError{Field: "event_id", Msg: "is required"}
	}
	if cmd.GetTerm() == 0 {
		return &spec.FieldError{Field: "term", Msg: "is required: the recording leader's Raft term"}
	}
	rj := cmd.GetRejoin()
	if rj == nil {
		return &spec.FieldError{Field: "rejoin", Msg: "is required: the rejoin's status"}
	}
	if _, known := regentv1.RejoinStatus_name[int32(rj.GetStatus())]; !known || rj.GetStatus() == regentv1.RejoinStatus_REJOIN_STATUS_UNSPECIFIED {
		return &spec.FieldError{Field: "rejoin.status", Msg: fmt.Sprintf("%d is not a rejoin status (pending, rebuilding, caught_up or failed)", int32(rj.GetStatus()))}
	}
	if cmd.DataLossBytes != nil && cmd.GetDataLossBytes() < 0 {
		return &spec.FieldError{Field: "data_loss_bytes", Msg: fmt.Sprintf("%d must not be negative; leave it unset when the loss is unknown", cmd.GetDataLossBytes())}
	}
	if cmd.LostTransactions != nil && cmd.GetLostTransactions() < 0 {
		return &spec.FieldError{Field: "lost_transactions", Msg: fmt.Sprintf("%d must not be negative; leave it unset when the count is unknown", cmd.GetLostTransactions())}
	}
	for _, f := range []struct {
		name string
		v    float64
	}{{"rejoin.rate_bytes_per_second", rj.GetRateBytesPerSecond()}, {"rejoin.eta_seconds", rj.GetEtaSeconds()}} {
		if f.v < 0 || math.IsNaN(f.v) || math.IsInf(f.v, 0) {
			return &spec.FieldError{Field: f.name, Msg: fmt.Sprintf("%v must be a finite number, not negative", f.v)}
		}
	}
	if err := checkTime("rejoin.started_at", rj.GetStartedAt()); err != nil {
		return err
	}
	if err := checkTime("rejoin.finished_at", rj.GetFinishedAt()); err != nil {
		return err
	}
	s := tx.state
	ei, ok := findEvent(s, cmd.GetEventId())
	if !ok {
		return fmt.Errorf("failover %d: %w; list failovers with `regent events`", cmd.GetEventId(), ErrNotFound)
	}
	ev := s.FailoverEvents[ei]
	if ev.GetStep() != regentv1.FailoverStep_FAILOVER_STEP_COMPLETED {
		return fmt.Errorf("failover %d of %s is at step %s: an old primary rejoins only after its failover completed: %w",
			ev.GetId(), ev.GetCluster(), StepName(ev.GetStep()), ErrConflict)
	}
	if cmd.GetTerm() < ev.GetTerm() {
		return fmt.Errorf("failover %d of %s: term %d is older than the event's %d: %w; a newer leader drives the rejoin now",
			ev.GetId(), ev.GetCluster(), cmd.GetTerm(), ev.GetTerm(), ErrConflict)
	}
	if n := rj.GetNode(); n != "" && n != ev.GetFromNode() {
		return &spec.FieldError{Field: "rejoin.node", Msg: fmt.Sprintf("%q is not failover %d's old primary %q", n, ev.GetId(), ev.GetFromNode())}
	}

	// Checked; now change.
	next := proto.Clone(rj).(*regentv1.Rejoin)
	next.Node = ev.GetFromNode()
	old := ev.GetRejoin()
	if next.Method == "" {
		next.Method = old.GetMethod()
	}
	if next.StartedAt == nil {
		next.StartedAt = old.GetStartedAt()
		if next.StartedAt == nil {
			next.StartedAt = tx.now()
		}
	}
	done := next.Status == regentv1.RejoinStatus_REJOIN_STATUS_CAUGHT_UP || next.Status == regentv1.RejoinStatus_REJOIN_STATUS_FAILED
	switch {
	case !done:
		next.FinishedAt = nil
	case next.FinishedAt == nil && old.GetStatus() == next.Status && old.GetFinishedAt() != nil:
		next.FinishedAt = old.GetFinishedAt()
	case next.FinishedAt == nil:
		next.FinishedAt = tx.now()
	}
	before := proto.Clone(ev).(*regentv1.FailoverEvent)
	ev.Rejoin = next
	if cmd.DataLossBytes != nil {
		v := cmd.GetDataLossBytes()
		ev.DataLossBytes, ev.DataLossExact = &v, true
	}
	if cmd.LostTransactions != nil {
		v := cmd.GetLostTransactions()
		ev.LostTransactions = &v
	}
	if cmd.GetForkLsn() != 0 {
		ev.ForkLsn = cmd.GetForkLsn()
	}
	if cmd.GetFinalLsn() != 0 {
		ev.FinalLsn = cmd.GetFinalLsn()
	}
	tx.res.Event = proto.Clone(ev).(*regentv1.FailoverEvent)
	if !proto.Equal(before, ev) {
		emitEvent(tx, ev)
	}

	// The node's role follows the rejoin: rejoining while it catches up, a replica once it
	// has. The aggregator never overwrites these roles itself.
	ci, ok := findCluster(s, ev.GetCluster())
	if !ok {
		return nil
	}
	c := s.Clusters[ci]
	ni, ok := findNodeStatus(c, ev.GetFromNode())
	if !ok || c.GetPrimary() == ev.GetFromNode() {
		return nil
	}
	ns := c.NodeStatus[ni]
	role := ns.GetRole()
	switch next.Status {
	case regentv1.RejoinStatus_REJOIN_STATUS_REBUILDING:
		if role == regentv1.NodeRole_NODE_ROLE_FENCED || role == regentv1.NodeRole_NODE_ROLE_UNKNOWN {
			role = regentv1.NodeRole_NODE_ROLE_REJOINING
		}
	case regentv1.RejoinStatus_REJOIN_STATUS_CAUGHT_UP:
		if role == regentv1.NodeRole_NODE_ROLE_FENCED || role == regentv1.NodeRole_NODE_ROLE_REJOINING || role == regentv1.NodeRole_NODE_ROLE_UNKNOWN {
			role = regentv1.NodeRole_NODE_ROLE_REPLICA
		}
	}
	if role != ns.GetRole() {
		ns.Role = role
		emitCluster(tx, c)
	}
	return nil
}
