package fsm

import (
	"testing"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// A switchover event carries its flag and timeout, is audited as a switchover under the
// operator's name, records the measured LSNs at fenced, and leaves the old primary a replica
// (it already follows the candidate) with the event's rejoin saying it followed.
func TestSwitchoverEvent(t *testing.T) {
	f := sagaFSM(t)
	cmd := ordersStart()
	cmd.Manual, cmd.Switchover, cmd.SwitchoverTimeoutMs = true, true, 7000
	cmd.TriggerReason = "switchover by alice"
	e := startCmd(cmd)
	e.actor = "alice"
	res := mustApply(t, f, e)
	if !res.Event.GetSwitchover() || res.Event.GetSwitchoverTimeoutMs() != 7000 {
		t.Fatalf("event %v: switchover and its timeout not copied", res.Event)
	}
	st, _ := f.State()
	last := st.Audit[len(st.Audit)-1]
	if last.GetAction() != "cluster.switchover" || last.GetActor() != "alice" || last.GetTarget() != "orders" {
		t.Errorf("audit %v, want cluster.switchover by alice on orders", last)
	}

	loss := int64(0)
	mustApply(t, f, advanceCmd(&regentv1.AdvanceFailoverCommand{EventId: 1, Step: stepFenced, Term: 2, FenceMethod: "switchover",
		DataLossBytes: &loss, DataLossExact: true, FinalLsn: 0x3000128, ForkLsn: 0x3000128}))
	ev := eventOf(t, f, 1)
	if ev.GetFinalLsn() != 0x3000128 || ev.GetForkLsn() != 0x3000128 || ev.GetDataLossBytes() != 0 || !ev.GetDataLossExact() {
		t.Fatalf("fenced switchover event: final %X fork %X loss %d exact %v", ev.GetFinalLsn(), ev.GetForkLsn(), ev.GetDataLossBytes(), ev.GetDataLossExact())
	}
	// A later step without LSNs keeps them.
	mustApply(t, f, step(1, stepPromoted, 2))
	ev = eventOf(t, f, 1)
	if ev.GetFinalLsn() != 0x3000128 {
		t.Errorf("final LSN %X lost at promoted", ev.GetFinalLsn())
	}
	if ev.GetRejoin().GetMethod() != "follow" || ev.GetRejoin().GetNode() != "n1" || ev.GetRejoin().GetStatus() != regentv1.RejoinStatus_REJOIN_STATUS_CAUGHT_UP {
		t.Errorf("rejoin %v, want n1 following (caught up)", ev.GetRejoin())
	}
	c, _ := f.Cluster("orders")
	for _, ns := range c.GetNodeStatus() {
		switch ns.GetName() {
		case "n1":
			if ns.GetRole() != regentv1.NodeRole_NODE_ROLE_REPLICA {
				t.Errorf("old primary role %v, want replica", ns.GetRole())
			}
		case "n2":
			if ns.GetRole() != regentv1.NodeRole_NODE_ROLE_PRIMARY {
				t.Errorf("new primary role %v", ns.GetRole())
			}
		}
	}
}

// A failover (not a switchover) still leaves its old primary fenced, with no rejoin.
func TestFailoverPromotionStillFencesTheOldPrimary(t *testing.T) {
	f := atStep(stepPromoted)(t)
	c, _ := f.Cluster("orders")
	for _, ns := range c.GetNodeStatus() {
		if ns.GetName() == "n1" && ns.GetRole() != regentv1.NodeRole_NODE_ROLE_FENCED {
			t.Errorf("old primary role %v, want fenced", ns.GetRole())
		}
	}
	if ev := eventOf(t, f, 1); ev.GetRejoin() != nil {
		t.Errorf("failover event has a rejoin %v before any rejoin", ev.GetRejoin())
	}
}
