package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// entry is one log entry to apply in a test.
type entry struct {
	typ     regentv1.CommandType
	payload proto.Message
	at      time.Time
	actor   string
}

func mustEncode(t testing.TB, e entry) []byte {
	t.Helper()
	if e.at.IsZero() {
		e.at = t0
	}
	data, err := Encode(e.typ, e.payload, e.at, e.actor)
	if err != nil {
		t.Fatalf("Encode(%s): %v", e.typ, err)
	}
	return data
}

// applyAt applies e as the entry at index idx and returns its result.
func applyAt(t testing.TB, f *FSM, idx uint64, e entry) *Result {
	t.Helper()
	out := f.Apply(&raft.Log{Index: idx, Term: 1, Type: raft.LogCommand, Data: mustEncode(t, e)})
	res, ok := out.(*Result)
	if !ok {
		t.Fatalf("Apply returned %T, want *Result", out)
	}
	if res.Index != idx {
		t.Fatalf("Result.Index = %d, want %d", res.Index, idx)
	}
	return res
}

// applyNext applies e at the index after the FSM's applied index.
func applyNext(t testing.TB, f *FSM, e entry) *Result {
	t.Helper()
	return applyAt(t, f, f.AppliedIndex()+1, e)
}

// mustApply applies e and fails the test if it was rejected.
func mustApply(t testing.TB, f *FSM, e entry) *Result {
	t.Helper()
	res := applyNext(t, f, e)
	if res.Err != nil {
		t.Fatalf("%s rejected: %v", e.typ, res.Err)
	}
	return res
}

func applyCmd(s *regentv1.ClusterSpec) entry {
	return entry{typ: regentv1.CommandType_COMMAND_TYPE_APPLY_CLUSTER, payload: &regentv1.ApplyClusterCommand{Spec: s}, actor: "alice"}
}

func deleteCmd(name string) entry {
	return entry{typ: regentv1.CommandType_COMMAND_TYPE_DELETE_CLUSTER, payload: &regentv1.DeleteClusterCommand{Name: name}, actor: "alice"}
}

func upsertCmd(m *regentv1.Member) entry {
	return entry{typ: regentv1.CommandType_COMMAND_TYPE_UPSERT_MEMBER, payload: &regentv1.UpsertMemberCommand{Member: m}, actor: "regent/w1"}
}

func removeCmd(name string) entry {
	return entry{typ: regentv1.CommandType_COMMAND_TYPE_REMOVE_MEMBER, payload: &regentv1.RemoveMemberCommand{Name: name}, actor: "bob"}
}

func auditCmd(action, target string) entry {
	return entry{typ: regentv1.CommandType_COMMAND_TYPE_RECORD_AUDIT, payload: &regentv1.RecordAuditCommand{Action: action, Target: target}, actor: "carol"}
}

func observeCmd(c *regentv1.RecordObservationsCommand) entry {
	return entry{typ: regentv1.CommandType_COMMAND_TYPE_RECORD_OBSERVATIONS, payload: c, actor: "regent/w1"}
}

func channelsCmd(c *regentv1.UpdateChannelsCommand) entry {
	return entry{typ: regentv1.CommandType_COMMAND_TYPE_UPDATE_CHANNELS, payload: c, actor: "regent/w1"}
}

func testSpec(name string, primary string, nodes ...string) *regentv1.ClusterSpec {
	s := &regentv1.ClusterSpec{Name: name, Primary: primary}
	for i, n := range nodes {
		s.Nodes = append(s.Nodes, &regentv1.NodeSpec{Name: n, Region: fmt.Sprintf("r%d", i), Host: "10.0.0." + fmt.Sprint(i+1), Port: 5432})
	}
	return s
}

func testMember(name, id string) *regentv1.Member {
	return &regentv1.Member{Name: name, Id: id, Region: "r-" + name, RaftAddr: name + ":7000", GrpcAddr: name + ":7001"}
}

// stateBytes is the canonical encoding of the FSM's state, without the applied index.
func stateBytes(t testing.TB, f *FSM) []byte {
	t.Helper()
	s, _ := f.State()
	b, err := deterministic.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// memSink is an in-memory raft.SnapshotSink.
type memSink struct {
	bytes.Buffer
	closed, cancelled bool
	failWrite         bool
}

func (m *memSink) ID() string { return "mem" }
func (m *memSink) Close() error {
	m.closed = true
	return nil
}
func (m *memSink) Cancel() error {
	m.cancelled = true
	return nil
}
func (m *memSink) Write(p []byte) (int, error) {
	if m.failWrite {
		return 0, errors.New("disk full")
	}
	return m.Buffer.Write(p)
}

// snapshotBytes takes a snapshot through the raft interfaces and returns its bytes.
func snapshotBytes(t testing.TB, f *FSM) []byte {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	defer snap.Release()
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatalf("Persist: %v", err)
	}
	if !sink.closed || sink.cancelled {
		t.Fatalf("Persist: closed=%v cancelled=%v, want closed only", sink.closed, sink.cancelled)
	}
	return sink.Bytes()
}

// closeTracker is an io.ReadCloser that records Close.
type closeTracker struct {
	io.Reader
	closed bool
}

func (c *closeTracker) Close() error {
	c.closed = true
	return nil
}

func restoreBytes(f *FSM, b []byte) error {
	return f.Restore(&closeTracker{Reader: bytes.NewReader(b)})
}

// withState returns an FSM restored from s at index idx (for states commands cannot yet
// build, such as channels and failover events).
func withState(t testing.TB, s *regentv1.State, idx uint64) *FSM {
	t.Helper()
	var buf bytes.Buffer
	if err := WriteSnapshot(&buf, s, idx); err != nil {
		t.Fatalf("WriteSnapshot: %v", err)
	}
	f := New()
	if err := restoreBytes(f, buf.Bytes()); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	return f
}

// genLog generates n entries of mixed commands from small name pools, so that creates,
// updates, deletes, conflicts and invalid requests all happen. Times only move forward.
func genLog(r *rand.Rand, n int) []entry {
	clusters := []string{"alpha", "beta", "gamma", "orders", "Bad_Name"}
	nodes := []string{"n1", "n2", "n3", "n4"}
	members := []string{"w1", "w2", "w3", "w4"}
	ids := []string{"id-1", "id-2", "id-3", "id-4", "id-5", "id-6"}
	at := t0
	var out []entry
	sagas := &sagaModel{oracle: New(), term: 1}
	for range n {
		at = at.Add(time.Duration(r.IntN(5000)) * time.Millisecond)
		var e entry
		switch k := r.IntN(18); {
		case k >= 16 && r.IntN(4) == 0:
			e = sagas.rejoin(r)
		case k >= 16:
			e = sagas.advance(r)
		case k == 15:
			e = sagas.start(r, clusters, nodes)
		case k == 14:
			e = refusalCmd(clusters[r.IntN(len(clusters))], []string{"", "paused: x", "no candidate: n2: unreachable", "cooldown until then"}[r.IntN(4)])
		case k == 13:
			c := clusters[r.IntN(len(clusters))]
			if r.IntN(30) == 0 {
				c = ""
			}
			e = pauseCmd(c, r.IntN(2) == 0, []string{"", "maintenance", "upgrade"}[r.IntN(3)])
		case k < 4:
			var ns []string
			for _, nn := range nodes {
				if r.IntN(3) > 0 {
					ns = append(ns, nn)
				}
			}
			primary := nodes[r.IntN(len(nodes))]
			s := testSpec(clusters[r.IntN(len(clusters))], primary, ns...)
			if r.IntN(4) == 0 {
				s.Policy = &regentv1.Policy{ProbeIntervalMs: int64(r.IntN(3000) - 100), CooldownMs: int64(r.IntN(100000))}
			}
			if r.IntN(4) == 0 {
				s.Dns = &regentv1.DnsSpec{Server: "ns:53", Zone: "example.test.", Record: "db.example.test.", Ttl: uint32(r.IntN(10)), TsigKey: "k"}
			}
			if len(s.Nodes) > 0 && r.IntN(3) == 0 {
				s.Nodes[0].Tags = []string{"nofailover"}
				s.Nodes[0].Priority = int32(r.IntN(20) - 10)
			}
			e = applyCmd(s)
		case k < 5:
			e = deleteCmd(clusters[r.IntN(len(clusters))])
		case k < 7:
			m := testMember(members[r.IntN(len(members))], ids[r.IntN(len(ids))])
			if r.IntN(8) == 0 {
				m.RaftAddr = ""
			}
			if r.IntN(3) == 0 {
				m.HttpAddr = fmt.Sprintf("h:%d", r.IntN(3))
			}
			e = upsertCmd(m)
		case k < 8:
			e = removeCmd(members[r.IntN(len(members))])
		case k < 9:
			action := []string{"failover.request", "pause", ""}[r.IntN(3)]
			e = auditCmd(action, clusters[r.IntN(len(clusters))])
		case k < 11:
			e = genObservations(r, clusters, nodes, members, at)
		default:
			e = genChannels(r, clusters, nodes, at)
		}
		e.at = at
		e.actor = []string{"alice", "bob", "regent/w2"}[r.IntN(3)]
		out = append(out, e)
		data, err := Encode(e.typ, e.payload, e.at, e.actor)
		if err != nil {
			panic(err)
		}
		sagas.oracle.Apply(&raft.Log{Index: uint64(len(out)), Type: raft.LogCommand, Data: data})
	}
	return out
}

// sagaModel generates failover commands against an oracle FSM that has applied the log so
// far, so most of them are plausible (the cluster's real primary, the next step of an open
// saga) and apply, while some are not and are refused.
type sagaModel struct {
	oracle *FSM
	term   uint64
}

func (m *sagaModel) start(r *rand.Rand, clusters, nodes []string) entry {
	c := &regentv1.StartFailoverCommand{Cluster: clusters[r.IntN(len(clusters))], FromNode: nodes[r.IntN(len(nodes))],
		ToNode: nodes[r.IntN(len(nodes))], TriggerReason: "primary unreachable", Term: m.term, Manual: r.IntN(3) == 0,
		Force: r.IntN(5) == 0, OldPrimaryLsn: uint64(r.IntN(8)) << 20, EstimatedLossBytes: int64(r.IntN(3)) << 10}
	if cs := m.oracle.Clusters(); len(cs) > 0 && r.IntN(5) > 0 {
		cl := cs[r.IntN(len(cs))]
		c.Cluster, c.FromNode, c.ToNode = cl.GetName(), cl.GetPrimary(), cl.GetNodes()[r.IntN(len(cl.GetNodes()))].GetName()
	}
	if r.IntN(30) == 0 {
		c.EstimatedLossBytes = -1
	}
	if r.IntN(30) == 0 {
		c.Term = 0
	}
	return startCmd(c)
}

func (m *sagaModel) advance(r *rand.Rand) entry {
	st, _ := m.oracle.State()
	c := &regentv1.AdvanceFailoverCommand{EventId: uint64(r.IntN(int(st.GetNextEventId())+2)) + 1, Term: m.term,
		Step: regentv1.FailoverStep(r.IntN(9))}
	var open []*regentv1.FailoverEvent
	for _, ev := range st.GetFailoverEvents() {
		if isOpen(ev) {
			open = append(open, ev)
		}
	}
	if len(open) > 0 && r.IntN(6) > 0 {
		ev := open[r.IntN(len(open))]
		c.EventId = ev.GetId()
		cur := ev.GetStep()
		switch k := r.IntN(8); {
		case k < 6:
			c.Step = nextStep[cur]
		case k < 7 && (cur == regentv1.FailoverStep_FAILOVER_STEP_DECIDED || cur == regentv1.FailoverStep_FAILOVER_STEP_FENCED):
			c.Step = regentv1.FailoverStep_FAILOVER_STEP_ABORTED
		}
	}
	switch r.IntN(10) {
	case 0:
		c.Term = m.term - 1 // a stale leader
	case 1:
		m.term++ // a new leader takes over
		c.Term = m.term
	}
	if r.IntN(10) > 0 {
		c.FenceMethod = []string{"sql", "command", "lease"}[r.IntN(3)]
		c.AbortReason = "given up"
	}
	if r.IntN(3) == 0 {
		c.Note = fmt.Sprintf("note %d", r.IntN(100))
	}
	if r.IntN(4) == 0 {
		c.DataLossBytes = proto.Int64(int64(r.IntN(5000)) - 100)
		c.DataLossExact = r.IntN(2) == 0
	}
	c.PromotedLsn, c.PromotedTimeline = uint64(r.IntN(8))<<20, uint32(r.IntN(3)+1)
	c.Published = r.IntN(2) == 0
	if !c.Published {
		c.PublishError = "timeout"
	}
	return advanceCmd(c)
}

// rejoin generates a RECORD_REJOIN, mostly for a completed event, now and then malformed,
// stale or for an event that is still open or unknown.
func (m *sagaModel) rejoin(r *rand.Rand) entry {
	st, _ := m.oracle.State()
	c := &regentv1.RecordRejoinCommand{EventId: uint64(r.IntN(int(st.GetNextEventId())+2)) + 1, Term: m.term,
		Rejoin: &regentv1.Rejoin{Status: regentv1.RejoinStatus(r.IntN(6)), Method: []string{"", "rewind", "reclone"}[r.IntN(3)],
			BytesBehind: uint64(r.IntN(1 << 20)), RateBytesPerSecond: float64(r.IntN(1000)), Detail: "d"}}
	var done []*regentv1.FailoverEvent
	for _, ev := range st.GetFailoverEvents() {
		if ev.GetStep() == regentv1.FailoverStep_FAILOVER_STEP_COMPLETED {
			done = append(done, ev)
		}
	}
	if len(done) > 0 && r.IntN(4) > 0 {
		c.EventId = done[r.IntN(len(done))].GetId()
	}
	if r.IntN(10) == 0 {
		c.Term = m.term - 1
	}
	if r.IntN(3) == 0 {
		c.DataLossBytes, c.LostTransactions = proto.Int64(int64(r.IntN(5000))-10), proto.Int64(int64(r.IntN(30))-1)
		c.ForkLsn, c.FinalLsn = uint64(r.IntN(8))<<20, uint64(r.IntN(8))<<20
	}
	if r.IntN(20) == 0 {
		c.Rejoin = nil
	}
	return rejoinCmd(c)
}

// genObservations generates a RECORD_OBSERVATIONS command: votes and node facts for names
// that may or may not exist, repeated values (no-ops), and now and then a malformed update.
func genObservations(r *rand.Rand, clusters, nodes, witnesses []string, at time.Time) entry {
	cmd := &regentv1.RecordObservationsCommand{}
	for range r.IntN(6) {
		v := &regentv1.Vote{Witness: witnesses[r.IntN(len(witnesses))], Reachable: r.IntN(2) == 0,
			Error: []string{"", "timeout", "wrong_system"}[r.IntN(3)]}
		if r.IntN(2) == 0 {
			v.Since = timestamppb.New(at.Add(-time.Duration(r.IntN(3000)) * time.Millisecond))
		}
		if r.IntN(40) == 0 {
			v.Witness = ""
		}
		cmd.Votes = append(cmd.Votes, &regentv1.VoteUpdate{Cluster: clusters[r.IntN(len(clusters))], Node: nodes[r.IntN(len(nodes))], Vote: v})
	}
	cmd.Nodes = genNodeUpdates(r, clusters, nodes, at)
	return entry{typ: regentv1.CommandType_COMMAND_TYPE_RECORD_OBSERVATIONS, payload: cmd}
}

func genNodeUpdates(r *rand.Rand, clusters, nodes []string, at time.Time) []*regentv1.NodeStatusUpdate {
	var out []*regentv1.NodeStatusUpdate
	for range r.IntN(4) {
		st := &regentv1.NodeStatus{Name: nodes[r.IntN(len(nodes))], Role: regentv1.NodeRole(r.IntN(5)), Timeline: uint32(r.IntN(3) + 1),
			CurrentLsn: uint64(r.IntN(4)) << 20, ReplayLsn: uint64(r.IntN(4)) << 20, SystemIdentifier: uint64(r.IntN(2)) + 7000,
			WalReceiverStatus: []string{"", "streaming"}[r.IntN(2)], ReplayPaused: r.IntN(5) == 0, WrongSystem: r.IntN(5) == 0}
		if r.IntN(2) == 0 {
			st.UpdatedAt = timestamppb.New(at)
		}
		if r.IntN(40) == 0 {
			st.Role = 9
		}
		out = append(out, &regentv1.NodeStatusUpdate{Cluster: clusters[r.IntN(len(clusters))], Status: st})
	}
	return out
}

// genChannels generates an UPDATE_CHANNELS command that upserts channels (new and existing
// keys, identical figures), sometimes replaces clusters' channel sets, and now and then
// repeats a key (rejected).
func genChannels(r *rand.Rand, clusters, nodes []string, at time.Time) entry {
	regions := []string{"r0", "r1", "r2"}
	cmd := &regentv1.UpdateChannelsCommand{}
	seen := map[channelKey]bool{}
	for range r.IntN(5) {
		ch := &regentv1.ReplicationChannel{Cluster: clusters[r.IntN(len(clusters))], PrimaryRegion: regions[r.IntN(len(regions))],
			SecondaryRegion: regions[r.IntN(len(regions))], Status: regentv1.ChannelStatus(r.IntN(5)),
			ApplyLsn: uint64(r.IntN(3)) << 20, PrimaryLsn: 3 << 20, LagSeconds: int64(r.IntN(3)) * 60,
			LastSeenAt: timestamppb.New(at.Truncate(10 * time.Second))}
		ch.LagBytes = ch.PrimaryLsn - ch.ApplyLsn
		if seen[keyOf(ch)] && r.IntN(4) > 0 {
			continue // mostly avoid the duplicate, sometimes send it (and be rejected)
		}
		seen[keyOf(ch)] = true
		cmd.Channels = append(cmd.Channels, ch)
	}
	if r.IntN(3) == 0 {
		cmd.Clusters = append(cmd.Clusters, clusters[r.IntN(len(clusters))])
	}
	cmd.Nodes = genNodeUpdates(r, clusters, nodes, at)
	return entry{typ: regentv1.CommandType_COMMAND_TYPE_UPDATE_CHANNELS, payload: cmd}
}

// genState generates a random state in canonical form, including object kinds that no
// command creates yet.
func genState(r *rand.Rand) *regentv1.State {
	ts := func() *timestamppb.Timestamp {
		return timestamppb.New(t0.Add(time.Duration(r.Int64N(1e15))))
	}
	s := &regentv1.State{}
	for i := range r.IntN(6) {
		name := fmt.Sprintf("c%02d", i)
		c := &regentv1.Cluster{Name: name, Primary: "n0", Paused: r.IntN(2) == 0, SpecVersion: r.Uint64N(9) + 1,
			PauseReason: []string{"", "maintenance"}[r.IntN(2)], DnsToken: []string{"", DNSToken(r.Uint64N(9), r.Uint64N(9))}[r.IntN(2)],
			CreatedAt: ts(), UpdatedAt: ts(), Policy: &regentv1.Policy{ProbeIntervalMs: r.Int64N(1000), MaxLagOnFailoverBytes: r.Int64()}}
		for j := range r.IntN(4) + 1 {
			n := fmt.Sprintf("n%d", j)
			c.Nodes = append(c.Nodes, &regentv1.NodeSpec{Name: n, Region: "r" + n, Host: "h", Port: uint32(r.IntN(65535) + 1),
				Tags: []string{"t"}[:r.IntN(2)], Priority: r.Int32() - r.Int32()})
			st := &regentv1.NodeStatus{Name: n, Role: regentv1.NodeRole(r.IntN(5)), Timeline: r.Uint32(),
				CurrentLsn: r.Uint64(), ReplayLsn: r.Uint64(), UpdatedAt: ts(), ReceivedLsn: r.Uint64(), SystemIdentifier: r.Uint64(),
				WalReceiverStatus: []string{"", "streaming", "catchup"}[r.IntN(3)], Upstream: "h:5432", ReplayPaused: r.IntN(2) == 0,
				WrongSystem: r.IntN(4) == 0}
			for k := range r.IntN(3) {
				st.Votes = append(st.Votes, &regentv1.Vote{Witness: fmt.Sprintf("w%d", k), Reachable: r.IntN(2) == 0, Since: ts(), Error: "timeout"})
			}
			c.NodeStatus = append(c.NodeStatus, st)
		}
		if r.IntN(2) == 0 {
			c.Dns = &regentv1.DnsSpec{Server: "s:53", Zone: "z.", Record: "r.z.", Ttl: r.Uint32(), TsigKey: "k"}
		}
		if r.IntN(2) == 0 {
			c.Refusal, c.RefusalAt = "no candidate", ts()
		}
		s.Clusters = append(s.Clusters, c)
	}
	for i := range r.IntN(5) {
		s.Members = append(s.Members, &regentv1.Member{Name: fmt.Sprintf("w%d", i), Id: fmt.Sprintf("id%d", r.IntN(1000)),
			RaftAddr: "a:1", JoinedAt: ts()})
	}
	for i := range r.IntN(4) {
		s.RemovedMemberIds = append(s.RemovedMemberIds, fmt.Sprintf("gone%d", i))
	}
	id := uint64(0)
	for range r.IntN(8) {
		id += r.Uint64N(3) + 1
		s.Channels = append(s.Channels, &regentv1.ReplicationChannel{Id: id, Cluster: "c00", PrimaryRegion: "a", SecondaryRegion: fmt.Sprintf("b%d", id),
			Status: regentv1.ChannelStatus(r.IntN(5)), ApplyLsn: r.Uint64(), PrimaryLsn: r.Uint64(), LagSeconds: r.Int64(),
			LastSeenAt: ts(), LagBytes: r.Uint64(), EstimatedLagSeconds: r.Float64() * 100})
	}
	s.NextChannelId = id + 1 + r.Uint64N(3)
	id = 0
	for range r.IntN(6) {
		id += r.Uint64N(3) + 1
		e := &regentv1.FailoverEvent{Id: id, Cluster: "c01", FromRegion: "a", ToRegion: "b", TriggerReason: "primary down",
			StartedAt: ts(), Step: regentv1.FailoverStep(r.IntN(8)), Term: r.Uint64(), PromotedLsn: r.Uint64(),
			DataLossExact: r.IntN(2) == 0, Steps: []*regentv1.StepTime{{Step: regentv1.FailoverStep_FAILOVER_STEP_DECIDED, At: ts()}},
			FromNode: "n0", ToNode: "n1", FenceMethod: "sql", Manual: r.IntN(2) == 0, Force: r.IntN(2) == 0, OldPrimaryLsn: r.Uint64(),
			Published: r.IntN(2) == 0, Notes: []string{"a", "b"}[:r.IntN(3)]}
		if r.IntN(2) == 0 {
			v := r.Int64N(1 << 30)
			e.DataLossBytes = &v
			e.CompletedAt = ts()
		}
		s.FailoverEvents = append(s.FailoverEvents, e)
	}
	if len(s.FailoverEvents) > 0 || r.IntN(2) == 0 {
		s.NextEventId = id + 1
	}
	id = 0
	for range r.IntN(10) {
		id += r.Uint64N(2) + 1
		s.Audit = append(s.Audit, &regentv1.AuditRecord{Id: id, At: ts(), Actor: "x", Action: "a", Target: "t", Detail: "d"})
	}
	if len(s.Audit) > 0 {
		s.NextAuditId = id + 1
	}
	return s
}
