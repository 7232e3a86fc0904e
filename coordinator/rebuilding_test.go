package coordinator

import (
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

const (
	chRebuilding = regentv1.ChannelStatus_CHANNEL_STATUS_REBUILDING
	chActive     = regentv1.ChannelStatus_CHANNEL_STATUS_ACTIVE
	chFailed     = regentv1.ChannelStatus_CHANNEL_STATUS_FAILED
)

// rejoiningState is orders after failover 1 from n1 (us-east) to n2 (eu-west): n1 rejoined
// (rebuilding), streams on timeline 2 and has replayed 6000 of the new primary's 10000; the
// channel eu-west → us-east is still failed with a 30 s lag.
func rejoiningState() *regentv1.State {
	st := ordersState()
	c := st.Clusters[0]
	c.Primary = "n2"
	*statusOf(st, "orders", "n2") = regentv1.NodeStatus{Name: "n2", Role: regentv1.NodeRole_NODE_ROLE_PRIMARY, Timeline: 2, CurrentLsn: 10000}
	*statusOf(st, "orders", "n1") = regentv1.NodeStatus{Name: "n1", Role: regentv1.NodeRole_NODE_ROLE_REJOINING, Timeline: 2,
		ReplayLsn: 6000, ReceivedLsn: 7000, WalReceiverStatus: "streaming"}
	st.FailoverEvents = []*regentv1.FailoverEvent{{Id: 1, Cluster: "orders", FromNode: "n1", ToNode: "n2",
		Step:   regentv1.FailoverStep_FAILOVER_STEP_COMPLETED,
		Rejoin: &regentv1.Rejoin{Node: "n1", Status: regentv1.RejoinStatus_REJOIN_STATUS_REBUILDING, Method: "rewind"}}}
	st.Channels = []*regentv1.ReplicationChannel{
		{Id: 1, Cluster: "orders", PrimaryRegion: "eu-west", SecondaryRegion: "ap-south", Status: chActive},
		{Id: 2, Cluster: "orders", PrimaryRegion: "eu-west", SecondaryRegion: "eu-west", Status: chActive},
		{Id: 3, Cluster: "orders", PrimaryRegion: "eu-west", SecondaryRegion: "us-east", Status: chFailed, LagSeconds: 30, LagBytes: 4000},
	}
	st.NextChannelId = 4
	return st
}

func TestRebuilds(t *testing.T) {
	base := Rebuild{Cluster: "orders", Node: "n1", EventID: 1, PrimaryRegion: "eu-west", Region: "us-east"}
	streaming := base
	streaming.Streaming, streaming.BytesBehind = true, 4000
	tests := []struct {
		name string
		mut  func(*regentv1.State)
		want []Rebuild
	}{
		{"streaming, channel not yet rebuilding", func(*regentv1.State) {}, []Rebuild{streaming}},
		{"rebuilding channel, lag over the threshold", func(st *regentv1.State) { st.Channels[2].Status = chRebuilding; st.Channels[2].LagSeconds = 60 },
			[]Rebuild{streaming}},
		{"rebuilding channel within the threshold: caught up", func(st *regentv1.State) {
			st.Channels[2].Status, st.Channels[2].LagSeconds = chRebuilding, 59
		}, []Rebuild{func() Rebuild { r := streaming; r.CaughtUp = true; return r }()}},
		{"not streaming yet", func(st *regentv1.State) {
			statusOf(st, "orders", "n1").WalReceiverStatus = ""
			st.Channels[2].Status, st.Channels[2].LagSeconds = chRebuilding, 0
		}, []Rebuild{base}},
		{"streaming on the old timeline (stale facts)", func(st *regentv1.State) { statusOf(st, "orders", "n1").Timeline = 1 }, []Rebuild{base}},
		{"ahead of the committed primary LSN", func(st *regentv1.State) { statusOf(st, "orders", "n1").ReplayLsn = 12000 },
			[]Rebuild{func() Rebuild { r := streaming; r.BytesBehind = 0; return r }()}},
		{"pending", func(st *regentv1.State) {
			st.FailoverEvents[0].Rejoin.Status = regentv1.RejoinStatus_REJOIN_STATUS_PENDING
		}, nil},
		{"caught up", func(st *regentv1.State) {
			st.FailoverEvents[0].Rejoin.Status = regentv1.RejoinStatus_REJOIN_STATUS_CAUGHT_UP
		}, nil},
		{"no rejoin", func(st *regentv1.State) { st.FailoverEvents[0].Rejoin = nil }, nil},
		{"event still open", func(st *regentv1.State) { st.FailoverEvents[0].Step = regentv1.FailoverStep_FAILOVER_STEP_PUBLISHED }, nil},
		{"a later failover", func(st *regentv1.State) {
			st.FailoverEvents = append(st.FailoverEvents, &regentv1.FailoverEvent{Id: 2, Cluster: "orders", FromNode: "n2", ToNode: "n4",
				Step: regentv1.FailoverStep_FAILOVER_STEP_DECIDED})
		}, nil},
		{"the old primary is primary again", func(st *regentv1.State) { st.Clusters[0].Primary = "n1" }, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := rejoiningState()
			tt.mut(st)
			got := Rebuilds(st)
			if len(got) != len(tt.want) {
				t.Fatalf("Rebuilds = %+v, want %+v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("Rebuilds[%d] = %+v, want %+v", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func TestRebuildTracker(t *testing.T) {
	tr := NewRebuildTracker()
	rb := func(behind uint64, streaming bool) []Rebuild {
		return []Rebuild{{Cluster: "orders", Node: "n1", Streaming: streaming, BytesBehind: behind}}
	}
	steps := []struct {
		at         time.Duration
		rbs        []Rebuild
		rate, eta  float64
		wantLength int
	}{
		{0, rb(4000, true), 0, 0, 1},                   // one sample: no rate yet
		{time.Second, rb(3000, true), 1000, 3, 1},      // 1000 B/s, 3000 B left
		{2 * time.Second, rb(2500, true), 750, 3.3, 1}, // (4000-2500)/2 s; 2500/750 = 3.33 s
		{3 * time.Second, rb(2600, true), 467, 5.6, 1}, // growing a little: still shrinking over the window
		{15 * time.Second, rb(2600, true), 0, 0, 1},    // the window moved on: the old samples dropped, no rate
		{16 * time.Second, rb(0, false), 0, 0, 0},      // stopped streaming: forgotten
		{17 * time.Second, nil, 0, 0, 0},
	}
	for _, s := range steps {
		got := tr.Observe(s.rbs, t0.Add(s.at))
		if len(s.rbs) == 0 {
			if len(got) != 0 || len(tr.samples) != 0 {
				t.Errorf("at %v: %v, %d tracked", s.at, got, len(tr.samples))
			}
			continue
		}
		if got[0].Rate != s.rate || got[0].ETA != s.eta {
			t.Errorf("at %v: rate %v eta %v, want %v %v", s.at, got[0].Rate, got[0].ETA, s.rate, s.eta)
		}
		if len(tr.samples) != s.wantLength {
			t.Errorf("at %v: %d nodes tracked, want %d", s.at, len(tr.samples), s.wantLength)
		}
	}
}

func TestOverrideRebuilding(t *testing.T) {
	rb := []Rebuild{{Cluster: "orders", Node: "n1", EventID: 1, PrimaryRegion: "eu-west", Region: "us-east", Streaming: true,
		BytesBehind: 4000, Rate: 1000, ETA: 4}}
	t.Run("nothing sent: the committed set with the override", func(t *testing.T) {
		st := rejoiningState()
		cmd := OverrideRebuilding(st, nil, rb)
		if cmd == nil || len(cmd.Clusters) != 1 || cmd.Clusters[0] != "orders" || len(cmd.Channels) != 3 {
			t.Fatalf("cmd = %v", cmd)
		}
		ch := chanOf(cmd.Channels, "orders", "eu-west", "us-east")
		if ch.Status != chRebuilding || ch.CatchupRateBytesPerSecond != 1000 || ch.CatchupEtaSeconds != 4 || ch.LagSeconds != 30 || ch.LagBytes != 4000 {
			t.Errorf("overridden channel = %v", ch)
		}
		if !proto.Equal(chanOf(cmd.Channels, "orders", "eu-west", "ap-south"), st.Channels[0]) {
			t.Errorf("another channel changed: %v", cmd.Channels)
		}
		if st.Channels[2].Status != chFailed {
			t.Error("the committed state was changed")
		}
	})
	t.Run("already committed so: nothing to send", func(t *testing.T) {
		st := rejoiningState()
		st.Channels[2].Status, st.Channels[2].CatchupRateBytesPerSecond, st.Channels[2].CatchupEtaSeconds = chRebuilding, 1000, 4
		if cmd := OverrideRebuilding(st, nil, rb); cmd != nil {
			t.Fatalf("cmd = %v, want nil", cmd)
		}
	})
	t.Run("the aggregator's set is overridden in place", func(t *testing.T) {
		st := rejoiningState()
		in := &regentv1.UpdateChannelsCommand{Clusters: []string{"orders"}, Channels: []*regentv1.ReplicationChannel{
			{Cluster: "orders", PrimaryRegion: "eu-west", SecondaryRegion: "us-east", Status: chActive, LagSeconds: 1},
			{Cluster: "orders", PrimaryRegion: "eu-west", SecondaryRegion: "eu-west", Status: chActive}},
			Nodes: []*regentv1.NodeStatusUpdate{{Cluster: "orders", Status: &regentv1.NodeStatus{Name: "n1"}}}}
		cmd := OverrideRebuilding(st, in, rb)
		if len(cmd.Clusters) != 1 || len(cmd.Channels) != 2 || len(cmd.Nodes) != 1 {
			t.Fatalf("cmd = %v", cmd)
		}
		if ch := cmd.Channels[0]; ch.Status != chRebuilding || ch.LagSeconds != 1 || ch.CatchupEtaSeconds != 4 {
			t.Errorf("overridden channel = %v", ch)
		}
		if cmd.Channels[1].Status != chActive {
			t.Errorf("the other channel = %v", cmd.Channels[1])
		}
	})
	t.Run("no such channel, no rebuilds", func(t *testing.T) {
		st := rejoiningState()
		st.Channels = st.Channels[:2]
		if cmd := OverrideRebuilding(st, nil, rb); cmd != nil {
			t.Errorf("cmd = %v, want nil", cmd)
		}
		in := &regentv1.UpdateChannelsCommand{Clusters: []string{"orders"}}
		if cmd := OverrideRebuilding(st, in, nil); cmd != in {
			t.Errorf("without rebuilds the command must pass through")
		}
	})
}

// TestRebuildingCommitCycle commits the override through a real FSM: the channel becomes
// rebuilding, the rejoin is then caught up, and once recorded so the aggregator's rule takes
// the channel back to active.
func TestRebuildingCommitCycle(t *testing.T) {
	c := newCluster(t, ordersSpec())
	st := c.state()
	// Bring the FSM to rejoiningState's shape: channels, then a completed failover n1 → n2.
	c.commit(regentv1.CommandType_COMMAND_TYPE_UPDATE_CHANNELS, &regentv1.UpdateChannelsCommand{Clusters: []string{"orders"},
		Channels: []*regentv1.ReplicationChannel{
			{Cluster: "orders", PrimaryRegion: "us-east", SecondaryRegion: "eu-west", Status: chActive},
			{Cluster: "orders", PrimaryRegion: "us-east", SecondaryRegion: "us-east", Status: chActive},
			{Cluster: "orders", PrimaryRegion: "us-east", SecondaryRegion: "ap-south", Status: chActive}}}, t0)
	c.commit(regentv1.CommandType_COMMAND_TYPE_START_FAILOVER, &regentv1.StartFailoverCommand{Cluster: "orders", FromNode: "n1", ToNode: "n2", Term: 1}, t0)
	for _, s := range []regentv1.FailoverStep{regentv1.FailoverStep_FAILOVER_STEP_FENCED, regentv1.FailoverStep_FAILOVER_STEP_PROMOTED,
		regentv1.FailoverStep_FAILOVER_STEP_REPOINTED, regentv1.FailoverStep_FAILOVER_STEP_PUBLISHED, regentv1.FailoverStep_FAILOVER_STEP_COMPLETED} {
		c.commit(regentv1.CommandType_COMMAND_TYPE_ADVANCE_FAILOVER, &regentv1.AdvanceFailoverCommand{EventId: 1, Term: 1, Step: s, FenceMethod: "sql"}, t0)
	}
	c.commit(regentv1.CommandType_COMMAND_TYPE_RECORD_REJOIN, &regentv1.RecordRejoinCommand{EventId: 1, Term: 1,
		Rejoin: &regentv1.Rejoin{Status: regentv1.RejoinStatus_REJOIN_STATUS_REBUILDING, Method: "rewind"}}, t0)
	c.commit(regentv1.CommandType_COMMAND_TYPE_UPDATE_CHANNELS, &regentv1.UpdateChannelsCommand{Nodes: []*regentv1.NodeStatusUpdate{
		{Cluster: "orders", Status: &regentv1.NodeStatus{Name: "n2", Role: regentv1.NodeRole_NODE_ROLE_PRIMARY, Timeline: 2, CurrentLsn: 10000}},
		{Cluster: "orders", Status: &regentv1.NodeStatus{Name: "n1", Role: regentv1.NodeRole_NODE_ROLE_REJOINING, Timeline: 2, ReplayLsn: 6000, WalReceiverStatus: "streaming"}}}}, t0)
	st = c.state()
	if ch := chanOf(st.Channels, "orders", "eu-west", "us-east"); ch.GetStatus() != chFailed {
		t.Fatalf("after the promotion the channel to the old primary is %v, want failed", ch)
	}
	tr := NewRebuildTracker()
	rbs := tr.Observe(Rebuilds(st), t0)
	if len(rbs) != 1 || rbs[0].CaughtUp {
		t.Fatalf("rebuilds = %+v", rbs)
	}
	cmd := OverrideRebuilding(st, nil, rbs)
	c.commit(regentv1.CommandType_COMMAND_TYPE_UPDATE_CHANNELS, cmd, t0)
	st = c.state()
	if ch := chanOf(st.Channels, "orders", "eu-west", "us-east"); ch.GetStatus() != chRebuilding {
		t.Fatalf("channel after the override = %v", ch)
	}
	// Caught up once the rebuilding channel is committed and lags less than the threshold.
	rbs = tr.Observe(Rebuilds(st), t0.Add(time.Second))
	if len(rbs) != 1 || !rbs[0].CaughtUp {
		t.Fatalf("rebuilds after the override = %+v, want caught up", rbs)
	}
	c.commit(regentv1.CommandType_COMMAND_TYPE_RECORD_REJOIN, &regentv1.RecordRejoinCommand{EventId: 1, Term: 1,
		Rejoin: &regentv1.Rejoin{Status: regentv1.RejoinStatus_REJOIN_STATUS_CAUGHT_UP}}, t0.Add(time.Second))
	st = c.state()
	if rbs := Rebuilds(st); len(rbs) != 0 {
		t.Fatalf("rebuilds after caught up = %+v", rbs)
	}
	if ns := statusOf(st, "orders", "n1"); ns.Role != regentv1.NodeRole_NODE_ROLE_REPLICA {
		t.Errorf("n1 after catching up: %v", ns.Role)
	}
	// The aggregator takes it from here: a healthy streaming standby within the threshold.
	a := NewAggregator()
	now := t0.Add(2 * time.Second)
	feed(a, report{"w1", []*regentv1.Observation{primaryObs("orders", "n2", now, 10000), standbyObs("orders", "n1", now, 10000),
		standbyObs("orders", "n3", now, 10000), standbyObs("orders", "n4", now, 10000), standbyObs("orders", "n5", now, 10000)}})
	if cmd := OverrideRebuilding(st, a.Channels(st, now), tr.Observe(Rebuilds(st), now)); cmd != nil {
		c.commit(regentv1.CommandType_COMMAND_TYPE_UPDATE_CHANNELS, cmd, now)
	}
	if ch := chanOf(c.state().Channels, "orders", "eu-west", "us-east"); ch.GetStatus() != chActive || ch.GetCatchupEtaSeconds() != 0 {
		t.Errorf("channel after the rejoin = %v, want active without catch-up figures", ch)
	}
}

func TestRejoinEvents(t *testing.T) {
	done, aborted, open := regentv1.FailoverStep_FAILOVER_STEP_COMPLETED, regentv1.FailoverStep_FAILOVER_STEP_ABORTED,
		regentv1.FailoverStep_FAILOVER_STEP_PROMOTED
	ev := func(id uint64, cluster, from, to string, step regentv1.FailoverStep) *regentv1.FailoverEvent {
		return &regentv1.FailoverEvent{Id: id, Cluster: cluster, FromNode: from, ToNode: to, Step: step}
	}
	tests := []struct {
		name    string
		primary string
		events  []*regentv1.FailoverEvent
		want    []uint64
	}{
		{"one failover", "n2", []*regentv1.FailoverEvent{ev(1, "orders", "n1", "n2", done)}, []uint64{1}},
		{"a second failover before the first old primary rejoined", "n3",
			[]*regentv1.FailoverEvent{ev(1, "orders", "n1", "n2", done), ev(2, "orders", "n2", "n3", done)}, []uint64{1, 2}},
		{"the old primary promoted again later", "n1",
			[]*regentv1.FailoverEvent{ev(1, "orders", "n1", "n2", done), ev(2, "orders", "n2", "n1", done)}, []uint64{2}},
		{"promoted again, then failed over again", "n3", []*regentv1.FailoverEvent{ev(1, "orders", "n1", "n2", done),
			ev(2, "orders", "n2", "n1", done), ev(3, "orders", "n1", "n3", done)}, []uint64{2, 3}},
		{"a failover running", "n2", []*regentv1.FailoverEvent{ev(1, "orders", "n1", "n2", done), ev(2, "orders", "n2", "n3", open)}, nil},
		{"an aborted one after", "n2", []*regentv1.FailoverEvent{ev(1, "orders", "n1", "n2", done), ev(2, "orders", "n2", "n3", aborted)}, []uint64{1}},
		{"the old primary is the primary (set by hand)", "n1", []*regentv1.FailoverEvent{ev(1, "orders", "n1", "n2", done)}, nil},
		{"another cluster's events, and a deleted cluster's", "n2", []*regentv1.FailoverEvent{ev(1, "billing", "b1", "b2", open),
			ev(2, "orders", "n1", "n2", done), ev(3, "gone", "g1", "g2", done)}, []uint64{2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := ordersState()
			st.Clusters[0].Primary = tt.primary
			st.Clusters = append(st.Clusters, &regentv1.Cluster{Name: "billing", Primary: "b1"})
			st.FailoverEvents = tt.events
			var got []uint64
			for _, e := range RejoinEvents(st) {
				got = append(got, e.GetId())
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("RejoinEvents = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestStreaming(t *testing.T) {
	for _, tt := range []struct {
		name          string
		receiver      string
		tli, primTLI  uint32
		strict, loose bool
	}{
		{"on the primary's timeline", "streaming", 2, 2, true, true},
		{"on an older timeline", "streaming", 1, 2, false, false},
		{"not streaming", "waiting", 2, 2, false, false},
		{"the primary's timeline unknown", "streaming", 2, 0, false, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			st := rejoiningState()
			statusOf(st, "orders", "n1").WalReceiverStatus, statusOf(st, "orders", "n1").Timeline = tt.receiver, tt.tli
			statusOf(st, "orders", "n2").Timeline = tt.primTLI
			if got := Streaming(st.Clusters[0], "n1", true); got != tt.strict {
				t.Errorf("strict: %v, want %v", got, tt.strict)
			}
			if got := Streaming(st.Clusters[0], "n1", false); got != tt.loose {
				t.Errorf("loose: %v, want %v", got, tt.loose)
			}
		})
	}
}
