package coordinator

import (
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

func TestChangesVotes(t *testing.T) {
	committed := func(w string, reachable bool) *regentv1.Vote {
		return &regentv1.Vote{Witness: w, Reachable: reachable, Since: ts(t0)}
	}
	want := func(w string, reachable bool, since time.Time, errClass string) *regentv1.VoteUpdate {
		return &regentv1.VoteUpdate{Cluster: "orders", Node: "n1",
			Vote: &regentv1.Vote{Witness: w, Reachable: reachable, Since: ts(since), Error: errClass}}
	}
	up := func(ms int64) *regentv1.Observation { return primaryObs("orders", "n1", at(ms), 100) }
	down := func(ms int64, class string) *regentv1.Observation { return downObs("orders", "n1", at(ms), class) }
	tests := []struct {
		name      string
		committed []*regentv1.Vote
		reports   []report
		want      []*regentv1.VoteUpdate
	}{
		{"first observation makes a vote", nil,
			[]report{{"w1", []*regentv1.Observation{up(100)}}, {"w1", []*regentv1.Observation{up(600)}}},
			[]*regentv1.VoteUpdate{want("w1", true, at(100), "")}},
		{"same value as committed: nothing", []*regentv1.Vote{committed("w1", true)},
			[]report{{"w1", []*regentv1.Observation{up(100), up(600)}}}, nil},
		{"flip: since is the first observation with the new value", []*regentv1.Vote{committed("w1", true)},
			[]report{{"w1", []*regentv1.Observation{up(100), down(600, "timeout"), down(1100, "refused")}}},
			[]*regentv1.VoteUpdate{want("w1", false, at(600), "refused")}},
		{"flip and flip back before commit: nothing", []*regentv1.Vote{committed("w1", true)},
			[]report{{"w1", []*regentv1.Observation{down(600, "timeout"), up(1100)}}}, nil},
		{"down, up, down: since is the last flip", []*regentv1.Vote{committed("w1", true)},
			[]report{{"w1", []*regentv1.Observation{down(100, "timeout"), up(600), down(1100, "timeout"), down(1600, "timeout")}}},
			[]*regentv1.VoteUpdate{want("w1", false, at(1100), "timeout")}},
		{"wrong system is unreachable", []*regentv1.Vote{committed("w1", true)},
			[]report{{"w1", []*regentv1.Observation{func() *regentv1.Observation {
				o := up(100)
				o.ErrorClass = ErrorClassWrongSystem
				return o
			}()}}},
			[]*regentv1.VoteUpdate{want("w1", false, at(100), ErrorClassWrongSystem)}},
		{"older report arriving late is ignored", []*regentv1.Vote{committed("w1", true)},
			[]report{{"w1", []*regentv1.Observation{down(1100, "timeout")}}, {"w1", []*regentv1.Observation{up(600)}}},
			[]*regentv1.VoteUpdate{want("w1", false, at(1100), "timeout")}},
		{"only the witness that flipped", []*regentv1.Vote{committed("w1", true), committed("w2", true)},
			[]report{{"w2", []*regentv1.Observation{down(120, "timeout")}}, {"w1", []*regentv1.Observation{up(100)}},
				{"w3", []*regentv1.Observation{up(130)}}},
			[]*regentv1.VoteUpdate{want("w2", false, at(120), "timeout"), want("w3", true, at(130), "")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := ordersState()
			n1 := statusOf(st, "orders", "n1")
			n1.Votes = tt.committed
			// The committed facts match the observations, so only votes can change.
			n1.Role, n1.Timeline, n1.CurrentLsn, n1.SystemIdentifier = regentv1.NodeRole_NODE_ROLE_PRIMARY, 1, 100, sysID
			a := NewAggregator()
			feed(a, tt.reports...)
			cmd := a.Changes(st, at(5000))
			if len(tt.want) == 0 {
				if cmd != nil {
					t.Fatalf("Changes = %v, want nil", cmd)
				}
				return
			}
			// (A wrong system also sets the node's wrong_system fact; TestChangesNodeFacts
			// covers facts.)
			if cmd == nil || len(cmd.Votes) != len(tt.want) {
				t.Fatalf("Changes = %v, want votes %v", cmd, tt.want)
			}
			for i := range tt.want {
				if !proto.Equal(cmd.Votes[i], tt.want[i]) {
					t.Errorf("votes[%d] = %v, want %v", i, cmd.Votes[i], tt.want[i])
				}
			}
		})
	}
}

func TestChangesNodeFacts(t *testing.T) {
	primary := func(w string, ms int64, lsn uint64) report {
		return report{w, []*regentv1.Observation{primaryObs("orders", "n1", at(ms), lsn)}}
	}
	replica := func(w string, ms int64, lsn uint64) report {
		return report{w, []*regentv1.Observation{standbyObs("orders", "n1", at(ms), lsn)}}
	}
	down := func(w string, ms int64, class string) report {
		return report{w, []*regentv1.Observation{downObs("orders", "n1", at(ms), class)}}
	}
	wrong := func(w string, ms int64) report {
		o := primaryObs("orders", "n1", at(ms), 999999)
		o.ErrorClass, o.SystemIdentifier, o.Timeline = ErrorClassWrongSystem, 42, 9
		return report{w, []*regentv1.Observation{o}}
	}
	facts := func(role regentv1.NodeRole, tl uint32, cur, replay uint64, wal string, wrongSys bool) *regentv1.NodeStatus {
		n := &regentv1.NodeStatus{Name: "n1", Role: role, Timeline: tl, CurrentLsn: cur, ReplayLsn: replay, ReceivedLsn: replay,
			SystemIdentifier: sysID, WalReceiverStatus: wal, WrongSystem: wrongSys}
		if wal != "" {
			n.Upstream = "10.0.0.1:5432"
		}
		return n
	}
	P, R := regentv1.NodeRole_NODE_ROLE_PRIMARY, regentv1.NodeRole_NODE_ROLE_REPLICA
	tests := []struct {
		name      string
		committed *regentv1.NodeStatus
		reports   []report
		want      *regentv1.NodeStatus // nil: no node update
	}{
		{"unknown becomes primary, highest LSN wins", &regentv1.NodeStatus{Name: "n1"},
			[]report{primary("w1", 100, 500), primary("w2", 120, 700), primary("w3", 90, 600)},
			facts(P, 1, 700, 0, "", false)},
		{"unknown becomes replica", &regentv1.NodeStatus{Name: "n1"},
			[]report{replica("w1", 100, 500), replica("w2", 110, 400)},
			facts(R, 1, 0, 500, "streaming", false)},
		{"LSN-only change is not a change", facts(P, 1, 100, 0, "", false),
			[]report{primary("w1", 100, 900)}, nil},
		{"nobody reaches it: committed role stays", facts(P, 1, 100, 0, "", false),
			[]report{down("w1", 100, "timeout"), down("w2", 100, "refused")}, nil},
		{"fenced stays fenced, timeline follows", facts(regentv1.NodeRole_NODE_ROLE_FENCED, 1, 100, 0, "", false),
			[]report{func() report {
				r := primary("w1", 100, 200)
				r.obs[0].Timeline = 2
				return r
			}()},
			func() *regentv1.NodeStatus {
				n := facts(regentv1.NodeRole_NODE_ROLE_FENCED, 2, 200, 0, "", false)
				return n
			}()},
		{"rejoining stays rejoining", facts(regentv1.NodeRole_NODE_ROLE_REJOINING, 1, 0, 50, "streaming", false),
			[]report{replica("w1", 100, 60)}, nil},
		{"wrong system flagged, facts from the others", facts(P, 1, 100, 0, "", false),
			[]report{wrong("w1", 200), primary("w2", 100, 150)},
			facts(P, 1, 150, 0, "", true)},
		{"all wrong system: flag set, role unknown, other committed facts kept", facts(P, 1, 100, 0, "", false),
			[]report{wrong("w1", 200), wrong("w2", 210)},
			facts(regentv1.NodeRole_NODE_ROLE_UNKNOWN, 1, 100, 0, "", true)},
		{"newest reacher decides the role", facts(R, 1, 0, 100, "streaming", false),
			[]report{replica("w1", 100, 100), func() report {
				r := primary("w2", 300, 120)
				r.obs[0].Timeline = 2
				return r
			}()},
			facts(P, 2, 120, 0, "", false)},
		{"wrong system clears once no witness sees it", facts(P, 1, 100, 0, "", true),
			[]report{wrong("w1", 100), primary("w1", 200, 100)},
			facts(P, 1, 100, 0, "", false)},
		{"replay paused and upstream are facts", facts(R, 1, 0, 100, "streaming", false),
			[]report{func() report {
				r := replica("w1", 100, 100)
				r.obs[0].ReplayPaused, r.obs[0].Upstream = true, "10.0.0.9:5432"
				return r
			}()},
			func() *regentv1.NodeStatus {
				n := facts(R, 1, 0, 100, "streaming", false)
				n.ReplayPaused, n.Upstream = true, "10.0.0.9:5432"
				return n
			}()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := ordersState()
			c := st.Clusters[0]
			c.NodeStatus[0] = tt.committed
			a := NewAggregator()
			feed(a, tt.reports...)
			// Votes are committed as they are, so only facts remain.
			if cmd := a.Changes(st, at(4000)); cmd != nil {
				for _, v := range cmd.Votes {
					tt.committed.Votes = append(tt.committed.Votes, v.Vote)
				}
			}
			cmd := a.Changes(st, at(5000))
			if tt.want == nil {
				if cmd != nil {
					t.Fatalf("Changes = %v, want nil", cmd)
				}
				return
			}
			if cmd == nil || len(cmd.Nodes) != 1 || len(cmd.Votes) != 0 {
				t.Fatalf("Changes = %v, want one node update", cmd)
			}
			tt.want.UpdatedAt = ts(at(5000))
			if got := cmd.Nodes[0]; got.Cluster != "orders" || !proto.Equal(got.Status, tt.want) {
				t.Fatalf("node update =\n %v\nwant\n %v", got.Status, tt.want)
			}
		})
	}
}

func TestChangesSkipsWhatStateDoesNotHold(t *testing.T) {
	a := NewAggregator()
	a.Add("w1", []*regentv1.Observation{
		primaryObs("gone", "n1", at(0), 1), primaryObs("orders", "n9", at(0), 1),
		{Cluster: "orders", Node: "n1"},                                        // no time: ignored
		{Cluster: "", Node: "n1", At: ts(at(0))},                               // no cluster: ignored
		{Cluster: "orders", Node: "n1", At: &timestamppb.Timestamp{Nanos: -1}}, // invalid time: ignored
	})
	if n := a.Add("", []*regentv1.Observation{primaryObs("orders", "n1", at(0), 1)}); n != 0 {
		t.Fatalf("Add without a witness kept %d observations", n)
	}
	st := ordersState()
	cmd := a.Changes(st, at(1000))
	for _, v := range cmd.GetVotes() {
		if v.Cluster != "orders" || v.Node != "n1" {
			t.Errorf("vote for %s/%s, which the state does not hold", v.Cluster, v.Node)
		}
	}
	if a.Channels(&regentv1.State{}, at(1000)) != nil || a.Changes(&regentv1.State{}, at(1000)) != nil {
		t.Fatal("an empty state gave commands")
	}
}

func TestForgetAndRetain(t *testing.T) {
	a := NewAggregator()
	for _, c := range []string{"orders", "billing"} {
		a.Add("w1", []*regentv1.Observation{primaryObs(c, "n1", at(0), 1), standbyObs(c, "n2", at(0), 1), standbyObs(c, "n7", at(0), 1)})
	}
	st := ordersState()
	a.Retain(st) // billing is not in the state; n7 is not a node of orders
	a.mu.RLock()
	_, billing := a.clusters["billing"]
	_, n7 := a.clusters["orders"]["n7"]
	_, n2 := a.clusters["orders"]["n2"]
	a.mu.RUnlock()
	if billing || n7 || !n2 {
		t.Fatalf("after Retain: billing %v, orders/n7 %v, orders/n2 %v", billing, n7, n2)
	}
	a.Forget("orders")
	if a.Changes(st, at(1000)) != nil || a.Channels(st, at(1000)) != nil {
		t.Fatal("a forgotten cluster still gives commands")
	}
}

// TestCommandsIgnoreArrivalOrder: the same observations give the same commands whatever
// order, grouping and concurrency they arrive with.
func TestCommandsIgnoreArrivalOrder(t *testing.T) {
	var all []report
	for i := range 12 {
		ms := int64(i) * 500
		for _, w := range []string{"w1", "w2", "w3"} {
			obs := []*regentv1.Observation{
				withHB(primaryObs("orders", "n1", at(ms+3), uint64(1000+i*100)), at(ms)),
				withHB(standbyObs("orders", "n2", at(ms+5), uint64(1000+i*90)), at(ms-1000)),
				standbyObs("orders", "n3", at(ms+5), uint64(900+i*80)),
				downObs("orders", "n4", at(ms+7), "timeout"),
				standbyObs("orders", "n5", at(ms+9), uint64(1000+i*100)),
			}
			if w == "w2" && i > 6 {
				obs[0] = downObs("orders", "n1", at(ms+3), "timeout")
			}
			all = append(all, report{w, obs})
		}
	}
	st := ordersState()
	want := NewAggregator()
	feed(want, all...)
	wantChanges, wantChannels := want.Changes(st, at(6500)), want.Channels(st, at(6500))
	if wantChanges == nil || wantChannels == nil {
		t.Fatal("the scenario should give both commands")
	}

	reversed := NewAggregator()
	for i := len(all) - 1; i >= 0; i-- {
		reversed.Add(all[i].witness, all[i].obs)
	}
	// Per witness in order, all witnesses concurrently.
	concurrent := NewAggregator()
	done := make(chan struct{})
	for _, w := range []string{"w1", "w2", "w3"} {
		go func() {
			defer func() { done <- struct{}{} }()
			for _, r := range all {
				if r.witness == w {
					concurrent.Add(w, r.obs)
				}
			}
		}()
	}
	for range 3 {
		<-done
	}
	for name, a := range map[string]*Aggregator{"reversed": reversed, "concurrent": concurrent} {
		// Reversed order loses history (older observations are dropped once a newer one is
		// held), so vote since and rates can differ; the facts must not.
		gotChanges, gotChannels := a.Changes(st, at(6500)), a.Channels(st, at(6500))
		if name == "concurrent" {
			if !proto.Equal(gotChanges, wantChanges) || !proto.Equal(gotChannels, wantChannels) {
				t.Errorf("%s: commands differ:\n%v\n%v\nwant\n%v\n%v", name, gotChanges, gotChannels, wantChanges, wantChannels)
			}
			continue
		}
		if fmt.Sprint(nodesOf(gotChanges)) != fmt.Sprint(nodesOf(wantChanges)) {
			t.Errorf("%s: node facts differ: %v, want %v", name, nodesOf(gotChanges), nodesOf(wantChanges))
		}
	}
}

func nodesOf(cmd *regentv1.RecordObservationsCommand) []string {
	var out []string
	for _, n := range cmd.GetNodes() {
		s := proto.Clone(n.Status).(*regentv1.NodeStatus)
		out = append(out, n.Cluster+"/"+s.String())
	}
	return out
}

// TestSystemIdentifierMismatch: a node whose answers carry another system identifier than
// the cluster's (its primary's) is flagged wrong_system with role UNKNOWN, even when the
// probe did not classify it (it did not know the identifier yet).
func TestSystemIdentifierMismatch(t *testing.T) {
	for _, tc := range []struct {
		name          string
		committedPrim uint64 // committed system identifier of the primary n1
		seePrimary    bool
	}{
		{"identifier from the primary's observations", 0, true},
		{"identifier from the committed primary", sysID, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := ordersState()
			n1 := statusOf(st, "orders", "n1")
			n1.Role, n1.SystemIdentifier = regentv1.NodeRole_NODE_ROLE_PRIMARY, tc.committedPrim
			a := NewAggregator()
			if tc.seePrimary {
				a.Add("w1", []*regentv1.Observation{primaryObs("orders", "n1", at(0), 100)})
			}
			other := standbyObs("orders", "n2", at(0), 100)
			other.SystemIdentifier = 42
			a.Add("w1", []*regentv1.Observation{other, standbyObs("orders", "n3", at(0), 100)})
			cmd := a.Changes(st, at(1000))
			got := map[string]*regentv1.NodeStatus{}
			for _, u := range cmd.GetNodes() {
				got[u.Status.Name] = u.Status
			}
			if n2 := got["n2"]; n2 == nil || !n2.WrongSystem || n2.Role != regentv1.NodeRole_NODE_ROLE_UNKNOWN {
				t.Errorf("n2 (system 42) = %v, want wrong_system with role unknown", n2)
			}
			if n3 := got["n3"]; n3 == nil || n3.WrongSystem || n3.Role != regentv1.NodeRole_NODE_ROLE_REPLICA {
				t.Errorf("n3 = %v, want a replica", n3)
			}
		})
	}
}
