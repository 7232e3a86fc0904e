package fsm

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
	"github.com/regentdb/regent/spec"
)

// base returns an FSM with cluster "orders" (primary n1; nodes n1, n2), witnesses w1 and w2,
// at index 3.
func base(t *testing.T) *FSM {
	f := New()
	mustApply(t, f, applyCmd(testSpec("orders", "n1", "n1", "n2")))
	mustApply(t, f, upsertCmd(testMember("w1", "id-1")))
	mustApply(t, f, upsertCmd(testMember("w2", "id-2")))
	return f
}

// failedOver returns an FSM whose cluster "orders" has primary n2 (as after a failover),
// a node status with observations for n1 and n2, is paused, has channels for two clusters
// and a failover event.
func failedOver(t *testing.T) *FSM {
	ts := timestamppb.New(t0)
	s := &regentv1.State{
		Clusters: []*regentv1.Cluster{
			{Name: "billing", Primary: "b1", Nodes: testSpec("billing", "b1", "b1").Nodes, SpecVersion: 1, CreatedAt: ts, UpdatedAt: ts,
				NodeStatus: []*regentv1.NodeStatus{{Name: "b1"}}},
			{Name: "orders", Primary: "n2", Nodes: testSpec("orders", "n1", "n1", "n2").Nodes, Paused: true, SpecVersion: 4,
				Policy: spec.WithDefaults(nil), CreatedAt: ts, UpdatedAt: ts,
				NodeStatus: []*regentv1.NodeStatus{
					{Name: "n1", Role: regentv1.NodeRole_NODE_ROLE_FENCED, Timeline: 3, CurrentLsn: 100},
					{Name: "n2", Role: regentv1.NodeRole_NODE_ROLE_PRIMARY, Timeline: 4, CurrentLsn: 200,
						Votes: []*regentv1.Vote{{Witness: "w1", Reachable: true, Since: ts}}},
				}},
		},
		Channels: []*regentv1.ReplicationChannel{
			{Id: 1, Cluster: "orders", PrimaryRegion: "r1", SecondaryRegion: "r0"},
			{Id: 2, Cluster: "billing", PrimaryRegion: "r0", SecondaryRegion: "r1"},
			{Id: 3, Cluster: "orders", PrimaryRegion: "r1", SecondaryRegion: "r2"},
		},
		FailoverEvents: []*regentv1.FailoverEvent{{Id: 1, Cluster: "orders", FromRegion: "r0", ToRegion: "r1",
			Step: regentv1.FailoverStep_FAILOVER_STEP_COMPLETED}},
		NextChannelId: 4, NextEventId: 2, NextAuditId: 1,
	}
	return withState(t, s, 50)
}

func TestApplyRejectsChangeNothing(t *testing.T) {
	tests := []struct {
		name  string
		setup func(*testing.T) *FSM
		cmd   entry
		want  error
		msg   string
	}{
		{"invalid spec", base, applyCmd(testSpec("orders", "nx", "n1")), spec.ErrInvalid, `cluster "orders": primary: "nx" is not one of the nodes (n1)`},
		{"invalid new cluster", base, applyCmd(testSpec("Bad", "n1", "n1")), spec.ErrInvalid, `name: "Bad" must be`},
		{"nil spec", base, applyCmd(nil), spec.ErrInvalid, "spec: the apply command carries no cluster spec"},
		{"bad policy", base, applyCmd(func() *regentv1.ClusterSpec {
			s := testSpec("orders", "n1", "n1")
			s.Policy = &regentv1.Policy{ProbeTimeoutMs: 900}
			return s
		}()), spec.ErrInvalid, "policy.probe_timeout: 900ms must not exceed"},
		{"drops current primary", failedOver, applyCmd(testSpec("orders", "n1", "n1", "n3")), ErrConflict,
			`cluster "orders": the spec drops node "n2", which is the current primary`},
		{"delete unknown cluster", base, deleteCmd("nope"), ErrNotFound, `cluster "nope": not found`},
		{"member without fields", base, upsertCmd(&regentv1.Member{Name: "w9"}), spec.ErrInvalid, "member.id: is required (missing: id, raft_addr)"},
		{"nil member", base, upsertCmd(nil), spec.ErrInvalid, "member: the upsert command carries no member"},
		{"member id taken", base, upsertCmd(testMember("w3", "id-1")), ErrConflict, `id id-1 already belongs to witness "w1"`},
		{"removed member", func(t *testing.T) *FSM {
			f := base(t)
			mustApply(t, f, removeCmd("w1"))
			return f
		}, upsertCmd(testMember("w1", "id-1")), ErrRemoved, `witness "w1" (id id-1): member was removed by an operator`},
		{"removed id under a new name", func(t *testing.T) *FSM {
			f := base(t)
			mustApply(t, f, removeCmd("w1"))
			return f
		}, upsertCmd(testMember("w7", "id-1")), ErrRemoved, "member was removed"},
		{"remove unknown member", base, removeCmd("w9"), ErrNotFound, `witness "w9": not found`},
		{"audit without action", base, auditCmd(" ", "x"), spec.ErrInvalid, "action: is required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := tt.setup(t)
			before := stateBytes(t, f)
			idx := f.AppliedIndex()
			_, _, wait := f.ChangesSince(idx)
			res := applyNext(t, f, tt.cmd)
			if !errors.Is(res.Err, tt.want) {
				t.Fatalf("Err = %v, want %v", res.Err, tt.want)
			}
			if !strings.Contains(res.Err.Error(), tt.msg) {
				t.Errorf("Err = %q, want it to contain %q", res.Err, tt.msg)
			}
			if !bytes.Equal(before, stateBytes(t, f)) {
				t.Fatalf("a rejected command changed the state")
			}
			if res.Created || res.Cluster != nil || len(res.Warnings) > 0 {
				t.Errorf("rejected result carries output: %+v", res)
			}
			if f.AppliedIndex() != idx+1 {
				t.Errorf("applied index = %d, want %d", f.AppliedIndex(), idx+1)
			}
			evs, complete, _ := f.ChangesSince(idx)
			if len(evs) != 0 || !complete {
				t.Errorf("ChangesSince after a reject = %v, complete=%v; want none, complete", evs, complete)
			}
			select {
			case <-wait:
			default:
				t.Errorf("wait channel not closed by a rejected Apply")
			}
		})
	}
}

func TestApplyClusterCreate(t *testing.T) {
	f := New()
	at := t0.Add(time.Hour)
	sp := testSpec("orders", "n2", "n2", "n1", "n3")
	sp.Nodes[1].Tags = []string{"nofailover"}
	e := applyCmd(sp)
	e.at = at
	res := applyNext(t, f, e)
	if res.Err != nil || !res.Created || len(res.Warnings) != 0 {
		t.Fatalf("result = %+v", res)
	}
	c, ok := f.Cluster("orders")
	if !ok {
		t.Fatal("cluster not found after create")
	}
	if !proto.Equal(c, res.Cluster) {
		t.Errorf("Result.Cluster differs from the stored cluster")
	}
	want := &regentv1.Cluster{
		Name: "orders", Primary: "n2", Nodes: sp.Nodes, Policy: spec.WithDefaults(nil), SpecVersion: 1, LeaseEpoch: 1,
		CreatedAt: timestamppb.New(at), UpdatedAt: timestamppb.New(at),
		NodeStatus: []*regentv1.NodeStatus{{Name: "n1"}, {Name: "n2"}, {Name: "n3"}},
	}
	if !proto.Equal(c, want) {
		t.Fatalf("cluster:\n got %v\nwant %v", c, want)
	}
	st, _ := f.State()
	wantAudit := &regentv1.AuditRecord{Id: 1, At: timestamppb.New(at), Actor: "alice", Action: "cluster.apply", Target: "orders",
		Detail: "created with 3 nodes, primary n2 (spec version 1)"}
	if len(st.Audit) != 1 || !proto.Equal(st.Audit[0], wantAudit) || st.NextAuditId != 2 {
		t.Fatalf("audit = %v (next %d), want [%v]", st.Audit, st.NextAuditId, wantAudit)
	}
	// The caller's spec is not kept by reference.
	sp.Nodes[0].Host = "changed"
	if c2, _ := f.Cluster("orders"); c2.Nodes[0].Host == "changed" {
		t.Fatal("the state aliases the command's spec")
	}
	// Clusters stay sorted by name.
	mustApply(t, f, applyCmd(testSpec("alpha", "a", "a")))
	mustApply(t, f, applyCmd(testSpec("zulu", "z", "z")))
	var names []string
	for _, c := range f.Clusters() {
		names = append(names, c.Name)
	}
	if strings.Join(names, ",") != "alpha,orders,zulu" {
		t.Fatalf("clusters = %v, want sorted", names)
	}
}

func TestApplyClusterUpdate(t *testing.T) {
	f := failedOver(t)
	at := t0.Add(48 * time.Hour)
	sp := testSpec("orders", "n2", "n3", "n2") // n1 removed, n3 added, n2 kept
	sp.Dns = &regentv1.DnsSpec{Server: "ns:53", Zone: "example.test.", Record: "orders.example.test.", Ttl: 5, TsigKey: "k"}
	e := applyCmd(sp)
	e.at = at
	res := applyNext(t, f, e)
	if res.Err != nil || res.Created || len(res.Warnings) != 0 {
		t.Fatalf("result = %+v", res)
	}
	c, _ := f.Cluster("orders")
	if c.Primary != "n2" || c.SpecVersion != 5 || !c.Paused {
		t.Errorf("primary=%s spec_version=%d paused=%v, want n2 5 true", c.Primary, c.SpecVersion, c.Paused)
	}
	if !c.CreatedAt.AsTime().Equal(t0) || !c.UpdatedAt.AsTime().Equal(at) {
		t.Errorf("created_at=%v updated_at=%v", c.CreatedAt.AsTime(), c.UpdatedAt.AsTime())
	}
	if !proto.Equal(c.Dns, sp.Dns) || len(c.Nodes) != 2 || c.Nodes[0].Name != "n3" {
		t.Errorf("spec fields not replaced: %v", c)
	}
	wantStatus := []*regentv1.NodeStatus{
		{Name: "n2", Role: regentv1.NodeRole_NODE_ROLE_PRIMARY, Timeline: 4, CurrentLsn: 200,
			Votes: []*regentv1.Vote{{Witness: "w1", Reachable: true, Since: timestamppb.New(t0)}}},
		{Name: "n3"},
	}
	if len(c.NodeStatus) != 2 || !proto.Equal(c.NodeStatus[0], wantStatus[0]) || !proto.Equal(c.NodeStatus[1], wantStatus[1]) {
		t.Errorf("node status = %v, want %v", c.NodeStatus, wantStatus)
	}
	st, _ := f.State()
	if len(st.Audit) != 1 || st.Audit[0].Detail != "updated to spec version 5 (2 nodes)" || st.Audit[0].Id != 1 {
		t.Errorf("audit = %v", st.Audit)
	}
	if len(st.Channels) != 3 {
		t.Errorf("an update must not touch channels: %v", st.Channels)
	}
}

func TestApplyClusterPrimaryWarning(t *testing.T) {
	f := failedOver(t)
	res := applyNext(t, f, applyCmd(testSpec("orders", "n1", "n1", "n2")))
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	want := "primary stays n2 (set by failover or switchover); the spec's primary (n1) is only used when a cluster is created"
	if len(res.Warnings) != 1 || res.Warnings[0] != want {
		t.Fatalf("warnings = %q, want [%q]", res.Warnings, want)
	}
	if res.Cluster.GetPrimary() != "n2" {
		t.Fatalf("primary = %s, want n2", res.Cluster.GetPrimary())
	}
}

func TestDeleteCluster(t *testing.T) {
	f := failedOver(t)
	e := deleteCmd("orders")
	e.actor = "dave"
	res := applyNext(t, f, e)
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	if _, ok := f.Cluster("orders"); ok {
		t.Fatal("cluster still there")
	}
	st, _ := f.State()
	if len(st.Clusters) != 1 || st.Clusters[0].Name != "billing" {
		t.Errorf("clusters = %v", st.Clusters)
	}
	if len(st.Channels) != 1 || st.Channels[0].Id != 2 {
		t.Errorf("channels = %v, want only billing's", st.Channels)
	}
	if len(st.FailoverEvents) != 1 {
		t.Errorf("failover events must stay as history: %v", st.FailoverEvents)
	}
	if len(st.Audit) != 1 || st.Audit[0].Action != "cluster.delete" || st.Audit[0].Actor != "dave" || st.Audit[0].Target != "orders" {
		t.Errorf("audit = %v", st.Audit)
	}
	evs, complete, _ := f.ChangesSince(50)
	var got []string
	for _, ev := range evs {
		got = append(got, ev.Kind+":"+ev.Key+map[bool]string{true: "-"}[ev.Deleted])
	}
	if !complete || strings.Join(got, " ") != "cluster:orders- channel:1- channel:3- audit:1" {
		t.Errorf("events = %v (complete %v)", got, complete)
	}
	// Deleted clusters can be created anew.
	res = applyNext(t, f, applyCmd(testSpec("orders", "n1", "n1")))
	if res.Err != nil || !res.Created || res.Cluster.SpecVersion != 1 {
		t.Fatalf("re-create: %+v", res)
	}
}

func TestUpsertMember(t *testing.T) {
	f := New()
	at1, at2 := t0, t0.Add(time.Minute)
	e := upsertCmd(testMember("w2", "id-2"))
	e.at = at1
	if res := applyNext(t, f, e); res.Err != nil || !res.Created {
		t.Fatalf("insert: %+v", res)
	}
	m, ok := f.Member("w2")
	if !ok || !m.JoinedAt.AsTime().Equal(at1) || m.RaftAddr != "w2:7000" {
		t.Fatalf("member = %v", m)
	}

	upd := testMember("w2", "id-2")
	upd.RaftAddr = "new:7000"
	upd.JoinedAt = timestamppb.New(at2.Add(time.Hour)) // ignored: joined_at is the first insert's
	e = upsertCmd(upd)
	e.at = at2
	if res := applyNext(t, f, e); res.Err != nil || res.Created {
		t.Fatalf("update: %+v", res)
	}
	m, _ = f.Member("w2")
	if !m.JoinedAt.AsTime().Equal(at1) || m.RaftAddr != "new:7000" {
		t.Fatalf("after update = %v", m)
	}
	if byID, ok := f.MemberByID("id-2"); !ok || !proto.Equal(byID, m) {
		t.Fatalf("MemberByID = %v, %v", byID, ok)
	}
	if _, ok := f.MemberByID("id-9"); ok {
		t.Fatal("MemberByID found an unknown id")
	}

	// Same name, new id (the witness was re-created with an empty data_dir): allowed.
	if res := applyNext(t, f, upsertCmd(testMember("w2", "id-22"))); res.Err != nil || res.Created {
		t.Fatalf("new id: %+v", res)
	}

	// An identical upsert changes nothing and tells watchers nothing.
	idx := f.AppliedIndex()
	before := stateBytes(t, f)
	if res := applyNext(t, f, upsertCmd(testMember("w2", "id-22"))); res.Err != nil || res.Created {
		t.Fatalf("identical: %+v", res)
	}
	if evs, _, _ := f.ChangesSince(idx); len(evs) != 0 || !bytes.Equal(before, stateBytes(t, f)) {
		t.Fatalf("identical upsert changed something: %v", evs)
	}

	mustApply(t, f, upsertCmd(testMember("w1", "id-1")))
	if ms := f.Members(); len(ms) != 2 || ms[0].Name != "w1" || ms[1].Name != "w2" {
		t.Fatalf("members = %v, want sorted by name", ms)
	}
	if st, _ := f.State(); len(st.Audit) != 0 {
		t.Fatalf("upserts are not audited: %v", st.Audit)
	}
}

func TestRemoveMember(t *testing.T) {
	f := New()
	mustApply(t, f, upsertCmd(testMember("w1", "id-b")))
	mustApply(t, f, upsertCmd(testMember("w2", "id-a")))
	mustApply(t, f, upsertCmd(testMember("w3", "id-c")))
	mustApply(t, f, removeCmd("w1"))
	mustApply(t, f, removeCmd("w2"))
	st, _ := f.State()
	if strings.Join(st.RemovedMemberIds, ",") != "id-a,id-b" {
		t.Fatalf("removed ids = %v, want sorted", st.RemovedMemberIds)
	}
	if len(st.Members) != 1 || st.Members[0].Name != "w3" {
		t.Fatalf("members = %v", st.Members)
	}
	if !f.IsRemoved("id-a") || !f.IsRemoved("id-b") || f.IsRemoved("id-c") {
		t.Fatal("IsRemoved wrong")
	}
	if len(st.Audit) != 2 || st.Audit[0].Action != "member.remove" || st.Audit[0].Target != "w1" || st.Audit[0].Detail != "id id-b" ||
		st.Audit[0].Actor != "bob" {
		t.Fatalf("audit = %v", st.Audit)
	}
	// A removed id that comes back under a name that was removed keeps the list unique.
	s := &regentv1.State{Members: []*regentv1.Member{{Name: "w1", Id: "id-a", RaftAddr: "x:1"}}, RemovedMemberIds: []string{"id-a"}}
	g := withState(t, s, 10)
	mustApply(t, g, removeCmd("w1"))
	if st, _ := g.State(); len(st.RemovedMemberIds) != 1 {
		t.Fatalf("removed ids = %v, want no duplicates", st.RemovedMemberIds)
	}
}

func TestRecordAudit(t *testing.T) {
	f := New()
	for i := range 3 {
		e := auditCmd("failover.request", "orders")
		e.at = t0.Add(time.Duration(i) * time.Second)
		e.payload.(*regentv1.RecordAuditCommand).Detail = "to n2"
		mustApply(t, f, e)
	}
	st, _ := f.State()
	for i, a := range st.Audit {
		want := &regentv1.AuditRecord{Id: uint64(i + 1), At: timestamppb.New(t0.Add(time.Duration(i) * time.Second)), Actor: "carol",
			Action: "failover.request", Target: "orders", Detail: "to n2"}
		if !proto.Equal(a, want) {
			t.Errorf("audit[%d] = %v, want %v", i, a, want)
		}
	}
	if st.NextAuditId != 4 {
		t.Errorf("next audit id = %d", st.NextAuditId)
	}
}

func TestAuditIsBounded(t *testing.T) {
	f := New()
	data := mustEncode(t, auditCmd("x", "y"))
	n := MaxAuditRecords + 5
	for i := 1; i <= n; i++ {
		f.Apply(&raft.Log{Index: uint64(i), Type: raft.LogCommand, Data: data})
	}
	st, _ := f.State()
	if len(st.Audit) != MaxAuditRecords || st.Audit[0].Id != 6 || st.Audit[len(st.Audit)-1].Id != uint64(n) || st.NextAuditId != uint64(n+1) {
		t.Fatalf("audit: %d records, ids %d..%d, next %d", len(st.Audit), st.Audit[0].Id, st.Audit[len(st.Audit)-1].Id, st.NextAuditId)
	}
}

func TestNonCommandEntriesChangeNothing(t *testing.T) {
	f := base(t)
	before, idx := stateBytes(t, f), f.AppliedIndex()
	for _, typ := range []raft.LogType{raft.LogConfiguration, raft.LogNoop, raft.LogBarrier} {
		res := f.Apply(&raft.Log{Index: idx + 1, Type: typ, Data: []byte("not a command")}).(*Result)
		if res.Err != nil || res.Index != idx+1 {
			t.Fatalf("%s: result %+v", typ, res)
		}
	}
	if !bytes.Equal(before, stateBytes(t, f)) || f.AppliedIndex() != idx {
		t.Fatal("a non-command entry changed the state or the applied index")
	}
}

func TestReadsReturnCopies(t *testing.T) {
	f := base(t)
	c, _ := f.Cluster("orders")
	c.Primary = "mutated"
	c.Nodes[0].Host = "mutated"
	st, _ := f.State()
	st.Clusters[0].Name = "mutated"
	st.Members = nil
	m, _ := f.Member("w1")
	m.Id = "mutated"
	f.Clusters()[0].Primary = "mutated"
	f.Members()[0].Name = "mutated"
	c2, _ := f.Cluster("orders")
	m2, _ := f.Member("w1")
	if c2.Primary != "n1" || c2.Nodes[0].Host == "mutated" || m2.Id != "id-1" || len(f.Members()) != 2 {
		t.Fatal("a reader's change reached the state")
	}
}
