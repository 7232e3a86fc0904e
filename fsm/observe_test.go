package fsm

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
	"github.com/regentdb/regent/spec"
)

func vote(cluster, node, witness string, reachable bool, since time.Time, errClass string) *regentv1.VoteUpdate {
	v := &regentv1.Vote{Witness: witness, Reachable: reachable, Error: errClass}
	if !since.IsZero() {
		v.Since = timestamppb.New(since)
	}
	return &regentv1.VoteUpdate{Cluster: cluster, Node: node, Vote: v}
}

func nodeUpd(cluster string, st *regentv1.NodeStatus) *regentv1.NodeStatusUpdate {
	return &regentv1.NodeStatusUpdate{Cluster: cluster, Status: st}
}

func channel(cluster, pr, sr string, apply, primary uint64) *regentv1.ReplicationChannel {
	lag := uint64(0)
	if primary > apply {
		lag = primary - apply
	}
	return &regentv1.ReplicationChannel{Cluster: cluster, PrimaryRegion: pr, SecondaryRegion: sr,
		Status: regentv1.ChannelStatus_CHANNEL_STATUS_ACTIVE, ApplyLsn: apply, PrimaryLsn: primary, LagBytes: lag}
}

// nodeOf returns a node's status from the FSM.
func nodeOf(t *testing.T, f *FSM, cluster, node string) *regentv1.NodeStatus {
	t.Helper()
	c, ok := f.Cluster(cluster)
	if !ok {
		t.Fatalf("cluster %q not found", cluster)
	}
	for _, n := range c.NodeStatus {
		if n.Name == node {
			return n
		}
	}
	t.Fatalf("node %q of %q not found", node, cluster)
	return nil
}

// applyWatched applies e and returns its events, described.
func applyWatched(t *testing.T, f *FSM, e entry) string {
	t.Helper()
	idx := f.AppliedIndex()
	mustApply(t, f, e)
	evs, complete, _ := f.ChangesSince(idx)
	if !complete {
		t.Fatal("history incomplete")
	}
	return describe(evs)
}

func TestRejectedObservationsChangeNothing(t *testing.T) {
	okVote := vote("orders", "n1", "w1", false, t0, "timeout")
	okNode := nodeUpd("orders", &regentv1.NodeStatus{Name: "n1", Role: regentv1.NodeRole_NODE_ROLE_REPLICA})
	okChan := channel("orders", "r1", "r0", 1, 2)
	obs := func(votes []*regentv1.VoteUpdate, nodes ...*regentv1.NodeStatusUpdate) entry {
		return observeCmd(&regentv1.RecordObservationsCommand{Votes: votes, Nodes: nodes})
	}
	chans := func(cs []*regentv1.ReplicationChannel, clusters []string, nodes ...*regentv1.NodeStatusUpdate) entry {
		return channelsCmd(&regentv1.UpdateChannelsCommand{Channels: cs, Clusters: clusters, Nodes: nodes})
	}
	badTime := &timestamppb.Timestamp{Seconds: -1 << 62}
	tests := []struct {
		name string
		cmd  entry
		msg  string
	}{
		{"nil vote update (an empty message on the wire)", obs([]*regentv1.VoteUpdate{okVote, nil}), "votes[1].cluster: is required"},
		{"vote without cluster", obs([]*regentv1.VoteUpdate{vote("", "n1", "w1", true, t0, "")}), "votes[0].cluster: is required"},
		{"vote without node", obs([]*regentv1.VoteUpdate{vote("orders", " ", "w1", true, t0, "")}), "votes[0].node: is required"},
		{"nil vote", obs([]*regentv1.VoteUpdate{okVote, {Cluster: "orders", Node: "n1"}}), "votes[1].vote: is required"},
		{"vote without witness", obs([]*regentv1.VoteUpdate{vote("orders", "n1", "", true, t0, "")}), "votes[0].vote.witness: is required"},
		{"vote with a bad time", obs([]*regentv1.VoteUpdate{{Cluster: "orders", Node: "n1", Vote: &regentv1.Vote{Witness: "w1", Since: badTime}}}),
			"votes[0].vote.since:"},
		{"nil node update", obs([]*regentv1.VoteUpdate{okVote}, okNode, nil), "nodes[1].cluster: is required"},
		{"node update without cluster", obs(nil, nodeUpd("", &regentv1.NodeStatus{Name: "n1"})), "nodes[0].cluster: is required"},
		{"node update without status", obs(nil, nodeUpd("orders", nil)), "nodes[0].status: is required"},
		{"node update without name", obs(nil, nodeUpd("orders", &regentv1.NodeStatus{})), "nodes[0].status.name: is required"},
		{"unknown role", obs(nil, nodeUpd("orders", &regentv1.NodeStatus{Name: "n1", Role: 42})), "nodes[0].status.role: 42 is not a node role"},
		{"bad updated_at", obs(nil, nodeUpd("orders", &regentv1.NodeStatus{Name: "n1", UpdatedAt: badTime})), "nodes[0].status.updated_at:"},
		{"nil channel", chans([]*regentv1.ReplicationChannel{okChan, nil}, nil), "channels[1].cluster: is required"},
		{"channel without cluster", chans([]*regentv1.ReplicationChannel{channel("", "r1", "r0", 1, 2)}, nil), "channels[0].cluster: is required"},
		{"channel without primary region", chans([]*regentv1.ReplicationChannel{channel("orders", "", "r0", 1, 2)}, nil),
			"channels[0].primary_region: is required"},
		{"channel without secondary region", chans([]*regentv1.ReplicationChannel{channel("orders", "r1", "", 1, 2)}, nil),
			"channels[0].secondary_region: is required"},
		{"duplicate channel", chans([]*regentv1.ReplicationChannel{okChan, channel("billing", "r0", "r1", 0, 0), channel("orders", "r1", "r0", 5, 5)}, nil),
			"channels[2]: channel orders r1→r0 repeats channels[0]"},
		{"unknown channel status", chans([]*regentv1.ReplicationChannel{{Cluster: "orders", PrimaryRegion: "a", SecondaryRegion: "b", Status: 9}}, nil),
			"channels[0].status: 9 is not a channel status"},
		{"bad last_seen_at", chans([]*regentv1.ReplicationChannel{{Cluster: "orders", PrimaryRegion: "a", SecondaryRegion: "b", LastSeenAt: badTime}}, nil),
			"channels[0].last_seen_at:"},
		{"empty cluster to replace", chans([]*regentv1.ReplicationChannel{okChan}, []string{"orders", ""}), "clusters[1]: is empty"},
		{"bad node in a channel batch", chans([]*regentv1.ReplicationChannel{okChan}, []string{"orders"}, nodeUpd("orders", nil)),
			"nodes[0].status: is required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := failedOver(t)
			before, idx := stateBytes(t, f), f.AppliedIndex()
			res := applyNext(t, f, tt.cmd)
			if !errors.Is(res.Err, spec.ErrInvalid) || !strings.Contains(res.Err.Error(), tt.msg) {
				t.Fatalf("Err = %v, want spec.ErrInvalid containing %q", res.Err, tt.msg)
			}
			if !bytes.Equal(before, stateBytes(t, f)) {
				t.Fatal("a rejected command changed the state")
			}
			if evs, _, _ := f.ChangesSince(idx); len(evs) != 0 {
				t.Fatalf("a rejected command emitted %s", describe(evs))
			}
		})
	}
}

func TestRecordObservationsVotes(t *testing.T) {
	t1 := t0.Add(time.Minute)
	reach := func(w string, r bool, since time.Time, e string) *regentv1.Vote {
		return &regentv1.Vote{Witness: w, Reachable: r, Since: timestamppb.New(since), Error: e}
	}
	tests := []struct {
		name   string
		votes  []*regentv1.VoteUpdate
		want   []*regentv1.Vote // votes of orders/n2 afterwards
		events string
	}{
		{"new vote sorted in", []*regentv1.VoteUpdate{vote("orders", "n2", "w3", false, t1, "timeout"), vote("orders", "n2", "w0", true, t1, "")},
			[]*regentv1.Vote{reach("w0", true, t1, ""), reach("w1", true, t0, ""), reach("w3", false, t1, "timeout")}, "51:cluster:orders"},
		{"flip replaces the vote", []*regentv1.VoteUpdate{vote("orders", "n2", "w1", false, t1, "refused")},
			[]*regentv1.Vote{reach("w1", false, t1, "refused")}, "51:cluster:orders"},
		{"same value is no change", []*regentv1.VoteUpdate{vote("orders", "n2", "w1", true, t1, "")},
			[]*regentv1.Vote{reach("w1", true, t0, "")}, ""},
		{"new error class while unreachable replaces", []*regentv1.VoteUpdate{
			vote("orders", "n2", "w1", false, t1, "timeout"), vote("orders", "n2", "w1", false, t1.Add(time.Second), "refused")},
			[]*regentv1.Vote{reach("w1", false, t1.Add(time.Second), "refused")}, "51:cluster:orders"},
		{"unset since takes the envelope's time", []*regentv1.VoteUpdate{vote("orders", "n2", "w2", false, time.Time{}, "dns")},
			[]*regentv1.Vote{reach("w1", true, t0, ""), reach("w2", false, t0.Add(time.Hour), "dns")}, "51:cluster:orders"},
		{"unknown cluster and node are skipped, the rest applies", []*regentv1.VoteUpdate{
			vote("gone", "n2", "w2", false, t1, ""), vote("orders", "n9", "w2", false, t1, ""),
			vote("orders", "n2", "w2", false, t1, "timeout"), vote("billing", "b1", "w1", true, t1, "")},
			[]*regentv1.Vote{reach("w1", true, t0, ""), reach("w2", false, t1, "timeout")}, "51:cluster:billing 51:cluster:orders"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := failedOver(t)
			e := observeCmd(&regentv1.RecordObservationsCommand{Votes: tt.votes})
			e.at = t0.Add(time.Hour)
			before := stateBytes(t, f)
			if got := applyWatched(t, f, e); got != tt.events {
				t.Errorf("events = %q, want %q", got, tt.events)
			}
			got := nodeOf(t, f, "orders", "n2")
			if len(got.Votes) != len(tt.want) {
				t.Fatalf("votes = %v, want %v", got.Votes, tt.want)
			}
			for i := range tt.want {
				if !proto.Equal(got.Votes[i], tt.want[i]) {
					t.Errorf("votes[%d] = %v, want %v", i, got.Votes[i], tt.want[i])
				}
			}
			if tt.events == "" && !bytes.Equal(before, stateBytes(t, f)) {
				t.Error("a no-op changed the state")
			}
			// Only votes changed: the node's other facts are the fixture's.
			if got.Role != regentv1.NodeRole_NODE_ROLE_PRIMARY || got.Timeline != 4 || got.CurrentLsn != 200 {
				t.Errorf("a vote changed the node's facts: %v", got)
			}
		})
	}
}

func TestRecordObservationsNodes(t *testing.T) {
	at := t0.Add(time.Hour)
	t1 := t0.Add(time.Minute)
	observed := &regentv1.NodeStatus{Name: "n2", Role: regentv1.NodeRole_NODE_ROLE_PRIMARY, Timeline: 5, CurrentLsn: 900, ReceivedLsn: 1,
		ReplayLsn: 2, SystemIdentifier: 7001, WalReceiverStatus: "", Upstream: "", ReplayPaused: false, WrongSystem: true,
		UpdatedAt: timestamppb.New(t1),
		Votes:     []*regentv1.Vote{{Witness: "w9", Reachable: false}}, // ignored: votes travel as VoteUpdates
	}
	wantN2 := proto.Clone(observed).(*regentv1.NodeStatus)
	wantN2.Votes = []*regentv1.Vote{{Witness: "w1", Reachable: true, Since: timestamppb.New(t0)}}
	noTime := proto.Clone(observed).(*regentv1.NodeStatus)
	noTime.UpdatedAt = nil
	wantNoTime := proto.Clone(wantN2).(*regentv1.NodeStatus)
	wantNoTime.UpdatedAt = timestamppb.New(at)
	sameFacts := &regentv1.NodeStatus{Name: "n2", Role: regentv1.NodeRole_NODE_ROLE_PRIMARY, Timeline: 4, CurrentLsn: 200,
		UpdatedAt: timestamppb.New(t1)}
	unchanged := &regentv1.NodeStatus{Name: "n2", Role: regentv1.NodeRole_NODE_ROLE_PRIMARY, Timeline: 4, CurrentLsn: 200,
		Votes: wantN2.Votes}

	tests := []struct {
		name   string
		nodes  []*regentv1.NodeStatusUpdate
		want   *regentv1.NodeStatus
		events string
	}{
		{"facts replaced, votes kept", []*regentv1.NodeStatusUpdate{nodeUpd("orders", observed)}, wantN2, "51:cluster:orders"},
		{"unset updated_at takes the envelope's time", []*regentv1.NodeStatusUpdate{nodeUpd("orders", noTime)}, wantNoTime, "51:cluster:orders"},
		{"same facts, newer time: no change", []*regentv1.NodeStatusUpdate{nodeUpd("orders", sameFacts)}, unchanged, ""},
		{"deleted cluster and unknown node skipped", []*regentv1.NodeStatusUpdate{
			nodeUpd("gone", observed), nodeUpd("orders", &regentv1.NodeStatus{Name: "n7"}), nodeUpd("orders", observed)}, wantN2, "51:cluster:orders"},
		{"several nodes of one cluster: one event", []*regentv1.NodeStatusUpdate{
			nodeUpd("orders", observed), nodeUpd("orders", &regentv1.NodeStatus{Name: "n1", Role: regentv1.NodeRole_NODE_ROLE_FENCED, Timeline: 3, CurrentLsn: 101})},
			wantN2, "51:cluster:orders"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := failedOver(t)
			before := stateBytes(t, f)
			e := observeCmd(&regentv1.RecordObservationsCommand{Nodes: tt.nodes})
			e.at = at
			if got := applyWatched(t, f, e); got != tt.events {
				t.Errorf("events = %q, want %q", got, tt.events)
			}
			if got := nodeOf(t, f, "orders", "n2"); !proto.Equal(got, tt.want) {
				t.Errorf("n2 =\n %v\nwant\n %v", got, tt.want)
			}
			if tt.events == "" && !bytes.Equal(before, stateBytes(t, f)) {
				t.Error("a no-op changed the state")
			}
		})
	}
}

func TestRecordObservationsEventCarriesCluster(t *testing.T) {
	f := failedOver(t)
	mustApply(t, f, observeCmd(&regentv1.RecordObservationsCommand{Votes: []*regentv1.VoteUpdate{vote("orders", "n1", "w2", false, t0, "timeout")}}))
	evs, _, _ := f.ChangesSince(50)
	if len(evs) != 1 || evs[0].Cluster == nil {
		t.Fatalf("events = %v", evs)
	}
	c, _ := f.Cluster("orders")
	if !proto.Equal(evs[0].Cluster, c) {
		t.Fatalf("event cluster = %v, want the stored cluster %v", evs[0].Cluster, c)
	}
	if st, _ := f.State(); len(st.Audit) != 0 {
		t.Fatalf("observations are not audited: %v", st.Audit)
	}
}

func TestUpdateChannels(t *testing.T) {
	seen := timestamppb.New(t0.Add(time.Minute))
	withSeen := func(ch *regentv1.ReplicationChannel) *regentv1.ReplicationChannel {
		ch.LastSeenAt = seen
		return ch
	}
	withID := func(id uint64, ch *regentv1.ReplicationChannel) *regentv1.ReplicationChannel {
		ch.Id = id
		return ch
	}
	// The fixture's channels: 1 orders r1→r0, 2 billing r0→r1, 3 orders r1→r2; next id 4.
	fixture := []*regentv1.ReplicationChannel{
		withID(1, &regentv1.ReplicationChannel{Cluster: "orders", PrimaryRegion: "r1", SecondaryRegion: "r0"}),
		withID(2, &regentv1.ReplicationChannel{Cluster: "billing", PrimaryRegion: "r0", SecondaryRegion: "r1"}),
		withID(3, &regentv1.ReplicationChannel{Cluster: "orders", PrimaryRegion: "r1", SecondaryRegion: "r2"}),
	}
	tests := []struct {
		name     string
		cmd      *regentv1.UpdateChannelsCommand
		want     []*regentv1.ReplicationChannel
		nextID   uint64
		events   string
		noChange bool
	}{
		{
			name:   "upsert keeps ids, new key gets the next id",
			cmd:    &regentv1.UpdateChannelsCommand{Channels: []*regentv1.ReplicationChannel{withSeen(channel("orders", "r1", "r3", 5, 9)), withID(77, channel("orders", "r1", "r0", 10, 30))}},
			want:   []*regentv1.ReplicationChannel{withID(1, channel("orders", "r1", "r0", 10, 30)), fixture[1], fixture[2], withID(4, withSeen(channel("orders", "r1", "r3", 5, 9)))},
			nextID: 5, events: "51:channel:4 51:channel:1",
		},
		{
			name: "replacing a cluster's set deletes what the batch leaves out",
			cmd: &regentv1.UpdateChannelsCommand{Clusters: []string{"orders"},
				Channels: []*regentv1.ReplicationChannel{channel("orders", "r1", "r2", 1, 2), channel("orders", "r1", "r1", 1, 1)}},
			want:   []*regentv1.ReplicationChannel{fixture[1], withID(3, channel("orders", "r1", "r2", 1, 2)), withID(4, channel("orders", "r1", "r1", 1, 1))},
			nextID: 5, events: "51:channel:1- 51:channel:3 51:channel:4",
		},
		{
			name:   "replacing with nothing deletes all of that cluster's channels",
			cmd:    &regentv1.UpdateChannelsCommand{Clusters: []string{"orders", "gone"}},
			want:   []*regentv1.ReplicationChannel{fixture[1]},
			nextID: 4, events: "51:channel:1- 51:channel:3-",
		},
		{
			name:     "identical figures change nothing",
			cmd:      &regentv1.UpdateChannelsCommand{Clusters: []string{"billing"}, Channels: []*regentv1.ReplicationChannel{proto.Clone(fixture[1]).(*regentv1.ReplicationChannel)}},
			want:     fixture,
			nextID:   4,
			noChange: true,
		},
		{
			name: "channels of deleted clusters are skipped and use no id",
			cmd: &regentv1.UpdateChannelsCommand{Clusters: []string{"gone"},
				Channels: []*regentv1.ReplicationChannel{channel("gone", "a", "b", 1, 2), channel("billing", "r0", "r2", 3, 4)}},
			want:   []*regentv1.ReplicationChannel{fixture[0], fixture[1], fixture[2], withID(4, channel("billing", "r0", "r2", 3, 4))},
			nextID: 5, events: "51:channel:4",
		},
		{
			name: "node facts apply with the channels",
			cmd: &regentv1.UpdateChannelsCommand{Nodes: []*regentv1.NodeStatusUpdate{
				nodeUpd("orders", &regentv1.NodeStatus{Name: "n2", Role: regentv1.NodeRole_NODE_ROLE_PRIMARY, Timeline: 4, CurrentLsn: 300}),
				nodeUpd("billing", &regentv1.NodeStatus{Name: "b1"}), // unchanged
			}, Channels: []*regentv1.ReplicationChannel{channel("orders", "r1", "r0", 250, 300)}},
			want:   []*regentv1.ReplicationChannel{withID(1, channel("orders", "r1", "r0", 250, 300)), fixture[1], fixture[2]},
			nextID: 4, events: "51:channel:1 51:cluster:orders",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := failedOver(t)
			before := stateBytes(t, f)
			if got := applyWatched(t, f, channelsCmd(tt.cmd)); got != tt.events {
				t.Errorf("events = %q, want %q", got, tt.events)
			}
			st, _ := f.State()
			if len(st.Channels) != len(tt.want) {
				t.Fatalf("channels = %v, want %v", st.Channels, tt.want)
			}
			for i := range tt.want {
				if !proto.Equal(st.Channels[i], tt.want[i]) {
					t.Errorf("channels[%d] = %v, want %v", i, st.Channels[i], tt.want[i])
				}
			}
			if st.NextChannelId != tt.nextID {
				t.Errorf("next channel id = %d, want %d", st.NextChannelId, tt.nextID)
			}
			if tt.noChange && !bytes.Equal(before, stateBytes(t, f)) {
				t.Error("a no-op changed the state")
			}
			// The state stays restorable: sorted ids below the counter, unique keys.
			if err := checkState(st); err != nil {
				t.Fatalf("state after apply fails the snapshot checks: %v", err)
			}
		})
	}
}

func TestUpdateChannelsIDsStartAtOne(t *testing.T) {
	f := base(t)
	mustApply(t, f, channelsCmd(&regentv1.UpdateChannelsCommand{Channels: []*regentv1.ReplicationChannel{
		channel("orders", "r0", "r1", 1, 2), channel("orders", "r0", "r0", 1, 2)}}))
	st, _ := f.State()
	if len(st.Channels) != 2 || st.Channels[0].Id != 1 || st.Channels[0].SecondaryRegion != "r1" || st.Channels[1].Id != 2 || st.NextChannelId != 3 {
		t.Fatalf("channels = %v, next %d", st.Channels, st.NextChannelId)
	}
	// A deleted cluster's channels go, and a re-created cluster's channels get new ids.
	mustApply(t, f, deleteCmd("orders"))
	mustApply(t, f, applyCmd(testSpec("orders", "n1", "n1", "n2")))
	mustApply(t, f, channelsCmd(&regentv1.UpdateChannelsCommand{Channels: []*regentv1.ReplicationChannel{channel("orders", "r0", "r1", 1, 2)}}))
	st, _ = f.State()
	if len(st.Channels) != 1 || st.Channels[0].Id != 3 {
		t.Fatalf("channels after re-create = %v", st.Channels)
	}
}

func TestRestoreRejectsDuplicateChannelsAndUnsortedVotes(t *testing.T) {
	meta := rawRecord{kind: recMeta, msg: &regentv1.State{NextChannelId: 9}}
	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"duplicate channel key", craft(1, 9, meta,
			rawRecord{kind: recChannel, msg: &regentv1.ReplicationChannel{Id: 1, Cluster: "a", PrimaryRegion: "x", SecondaryRegion: "y"}},
			rawRecord{kind: recChannel, msg: &regentv1.ReplicationChannel{Id: 2, Cluster: "a", PrimaryRegion: "x", SecondaryRegion: "y"}}),
			"channels 1 and 2 are both a x→y"},
		{"votes unsorted", craft(1, 9, meta, rawRecord{kind: recCluster, msg: &regentv1.Cluster{Name: "a",
			NodeStatus: []*regentv1.NodeStatus{{Name: "n1", Votes: []*regentv1.Vote{{Witness: "w2"}, {Witness: "w1"}}}}}}),
			`votes on node "n1" of cluster "a" are not sorted`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := ReadSnapshot(bytes.NewReader(tt.data))
			if !errors.Is(err, ErrBadSnapshot) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("ReadSnapshot = %v, want ErrBadSnapshot containing %q", err, tt.want)
			}
		})
	}
}

// TestObservationCommandsAreIdempotent: re-applying an applied observation or channel
// command leaves the same state, and — unless the batch itself names one object twice —
// tells watchers nothing. This is what makes a leader's re-sent batch cheap.
func TestObservationCommandsAreIdempotent(t *testing.T) {
	checked := 0
	for seed := uint64(1); seed <= 20; seed++ {
		f := New()
		for _, e := range genLog(rand.New(rand.NewPCG(seed, 99)), 300) {
			res := applyNext(t, f, e)
			if res.Err != nil || (e.typ != regentv1.CommandType_COMMAND_TYPE_RECORD_OBSERVATIONS &&
				e.typ != regentv1.CommandType_COMMAND_TYPE_UPDATE_CHANNELS) {
				continue
			}
			before, idx := stateBytes(t, f), f.AppliedIndex()
			mustApply(t, f, e)
			if !bytes.Equal(before, stateBytes(t, f)) {
				t.Fatalf("seed %d: re-applying %s changed the state", seed, e.typ)
			}
			if evs, _, _ := f.ChangesSince(idx); len(evs) > 0 && !repeatsObject(e.payload) {
				t.Fatalf("seed %d: re-applying %s emitted %s", seed, e.typ, describe(evs))
			}
			checked++
		}
	}
	if checked < 100 {
		t.Fatalf("only %d commands checked", checked)
	}
}

// repeatsObject reports whether a batch updates one vote or node twice (then re-applying it
// flips the object back and forth, and ends where it was).
func repeatsObject(p proto.Message) bool {
	seen := map[string]bool{}
	dup := func(k string) bool {
		if seen[k] {
			return true
		}
		seen[k] = true
		return false
	}
	var nodes []*regentv1.NodeStatusUpdate
	switch c := p.(type) {
	case *regentv1.RecordObservationsCommand:
		for _, v := range c.Votes {
			if dup("vote/" + v.GetCluster() + "/" + v.GetNode() + "/" + v.GetVote().GetWitness()) {
				return true
			}
		}
		nodes = c.Nodes
	case *regentv1.UpdateChannelsCommand:
		nodes = c.Nodes
	}
	for _, n := range nodes {
		if dup("node/" + n.GetCluster() + "/" + n.GetStatus().GetName()) {
			return true
		}
	}
	return false
}
