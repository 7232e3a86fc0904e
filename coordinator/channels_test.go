package coordinator

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

const (
	active     = regentv1.ChannelStatus_CHANNEL_STATUS_ACTIVE
	lagging    = regentv1.ChannelStatus_CHANNEL_STATUS_LAGGING
	failed     = regentv1.ChannelStatus_CHANNEL_STATUS_FAILED
	rebuilding = regentv1.ChannelStatus_CHANNEL_STATUS_REBUILDING
)

// obsAt builds reports compactly: one witness, observations in order.
func obsAt(w string, obs ...*regentv1.Observation) report { return report{w, obs} }

func TestChannelFigures(t *testing.T) {
	P := func(ms int64, lsn uint64) *regentv1.Observation { return primaryObs("orders", "n1", at(ms), lsn) }
	S := func(n string, ms int64, replay uint64) *regentv1.Observation {
		return standbyObs("orders", n, at(ms), replay)
	}
	D := func(n string, ms int64) *regentv1.Observation { return downObs("orders", n, at(ms), "timeout") }
	W := func(n string, ms int64) *regentv1.Observation {
		o := standbyObs("orders", n, at(ms), 1<<40)
		o.ErrorClass = ErrorClassWrongSystem
		return o
	}
	ch := func(apply, primary, lagBytes uint64, lagS int64, est float64, seen time.Time, st regentv1.ChannelStatus) *regentv1.ReplicationChannel {
		c := &regentv1.ReplicationChannel{Cluster: "orders", PrimaryRegion: "us-east", SecondaryRegion: "eu-west", ApplyLsn: apply,
			PrimaryLsn: primary, LagBytes: lagBytes, LagSeconds: lagS, EstimatedLagSeconds: est, Status: st}
		if !seen.IsZero() {
			c.LastSeenAt = ts(seen)
		}
		return c
	}
	tests := []struct {
		name      string
		committed *regentv1.ReplicationChannel // us-east→eu-west, id 1
		reports   []report
		secondary string // default eu-west
		want      *regentv1.ReplicationChannel
	}{
		{
			name: "heartbeat lag, apply is the best standby's",
			reports: []report{obsAt("w1", withHB(P(1000, 10000), at(1000)), withHB(S("n2", 1000, 4000), at(-74000)),
				withHB(S("n3", 900, 3000), at(-90000)))},
			want: ch(4000, 10000, 6000, 75, 75, at(1000), active),
		},
		{
			name:    "caught up: no lag whatever the heartbeats say",
			reports: []report{obsAt("w1", withHB(P(1000, 5000), at(1000)), withHB(S("n2", 1000, 5000), at(-2000)))},
			want:    ch(5000, 5000, 0, 0, 0, at(1000), active),
		},
		{
			name: "no heartbeats: lag from the write rate of the longest history",
			reports: []report{
				obsAt("w1", P(0, 0), P(5000, 5e6), P(10000, 10e6)),
				obsAt("w2", P(9500, 9e6), P(10000, 10e6)), // 2 MB/s over half a second: the shorter history
				obsAt("w1", S("n2", 10000, 7e6)),
			},
			want: ch(7e6, 10e6, 3e6, 3, 3, at(10000), active),
		},
		{
			name:    "the rate covers only the last RateWindow",
			reports: []report{obsAt("w1", P(0, 0), P(10000, 25e6), P(15000, 30e6), S("n2", 15000, 27e6))},
			want:    ch(27e6, 30e6, 3e6, 3, 3, at(15000), active),
		},
		{
			name:      "idle primary without heartbeats: committed lag stays",
			committed: ch(3000, 5000, 2000, 42, 42, at(-5000), active),
			reports:   []report{obsAt("w1", P(0, 5000), P(1000, 5000), S("n2", 1000, 4000))},
			want:      ch(4000, 5000, 1000, 42, 42, at(1000), active),
		},
		{
			name:    "a wrong system standby does not count",
			reports: []report{obsAt("w1", P(1000, 5000), W("n2", 1000), S("n3", 1000, 3000))},
			want:    ch(3000, 5000, 2000, 0, 0, at(1000), active),
		},
		{
			name: "a standby answering with another system identifier does not count",
			reports: []report{obsAt("w1", P(1000, 5000), func() *regentv1.Observation {
				o := S("n2", 1000, 4900)
				o.SystemIdentifier = 42
				return o
			}(), S("n3", 1000, 3000))},
			want: ch(3000, 5000, 2000, 0, 0, at(1000), active),
		},
		{
			name:      "no standby reachable: committed apply and last_seen stay (and it failed)",
			committed: ch(2500, 3000, 500, 1, 1, at(-3000), active),
			reports:   []report{obsAt("w1", withHB(P(1000, 5000), at(1000)), D("n2", 1000), D("n3", 1000))},
			want:      ch(2500, 5000, 2500, 1, 1, at(-3000), failed),
		},
		{
			name:    "no standby of the region reached yet: lag unknown (zero), not the whole WAL",
			reports: []report{obsAt("w1", withHB(P(0, 0), at(0)), withHB(P(1000, 5e9), at(1000)))},
			want:    ch(0, 5e9, 0, 0, 0, time.Time{}, active),
		},
		{
			name:      "still never reached after a commit: lag unknown, failed by reachability",
			committed: ch(0, 4e9, 0, 0, 0, time.Time{}, active),
			reports:   []report{obsAt("w1", P(0, 0), P(1000, 5e9), D("n2", 1000), D("n3", 1000))},
			want:      ch(0, 5e9, 0, 0, 0, time.Time{}, failed),
		},
		{
			name:      "primary unreachable: committed primary_lsn stays",
			committed: ch(5000, 8000, 3000, 0, 0, at(-3000), active),
			reports:   []report{obsAt("w1", D("n1", 1000), S("n2", 1000, 6000))},
			want:      ch(6000, 8000, 2000, 0, 0, at(1000), active),
		},
		{
			name:      "a standby in the primary's region gives the (r, r) channel",
			reports:   []report{obsAt("w1", P(1000, 5000), S("n4", 1000, 4500))},
			secondary: "us-east",
			want: func() *regentv1.ReplicationChannel {
				c := ch(4500, 5000, 500, 0, 0, at(1000), active)
				c.SecondaryRegion = "us-east"
				return c
			}(),
		},
		{
			name:    "lagging above twice the alert threshold",
			reports: []report{obsAt("w1", withHB(P(1000, 10000), at(1000)), withHB(S("n2", 1000, 4000), at(1000-121000)))},
			want:    ch(4000, 10000, 6000, 121, 121, at(1000), lagging),
		},
		{
			name:    "exactly twice the threshold is still active",
			reports: []report{obsAt("w1", withHB(P(1000, 10000), at(1000)), withHB(S("n2", 1000, 4000), at(1000-120000)))},
			want:    ch(4000, 10000, 6000, 120, 120, at(1000), active),
		},
		{
			name: "estimated seconds use the rate even when heartbeats give lag_seconds",
			reports: []report{obsAt("w1", withHB(P(0, 0), at(0)), withHB(P(4000, 8e6), at(4000)),
				withHB(S("n2", 4000, 7e6), at(1000)))},
			want: ch(7e6, 8e6, 1e6, 3, 0.5, at(4000), active),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := ordersState()
			statusOf(st, "orders", "n1").Role = regentv1.NodeRole_NODE_ROLE_PRIMARY
			if tt.committed != nil {
				c := proto.Clone(tt.committed).(*regentv1.ReplicationChannel)
				c.Id = 1
				st.Channels, st.NextChannelId = []*regentv1.ReplicationChannel{c}, 2
			}
			a := NewAggregator()
			feed(a, tt.reports...)
			cmd := a.Channels(st, at(16000))
			if cmd == nil {
				t.Fatal("Channels = nil")
			}
			sec := tt.secondary
			if sec == "" {
				sec = "eu-west"
			}
			got := chanOf(cmd.Channels, "orders", "us-east", sec)
			if !proto.Equal(got, tt.want) {
				t.Fatalf("channel us-east→%s =\n %v\nwant\n %v", sec, got, tt.want)
			}
		})
	}
}

func TestChannelStatus(t *testing.T) {
	S := func(n string, ms int64) *regentv1.Observation { return standbyObs("orders", n, at(ms), 100) }
	D := func(n string, ms int64) *regentv1.Observation { return downObs("orders", n, at(ms), "timeout") }
	notStreaming := func(n string, ms int64) *regentv1.Observation {
		o := standbyObs("orders", n, at(ms), 100)
		o.WalReceiverStatus = ""
		return o
	}
	wrong := func(n string, ms int64) *regentv1.Observation {
		o := standbyObs("orders", n, at(ms), 100)
		o.ErrorClass = ErrorClassWrongSystem
		return o
	}
	// eu-west holds n2 and n3; down_after is 1.5 s.
	tests := []struct {
		name      string
		committed regentv1.ChannelStatus
		reports   []report
		now       int64
		want      regentv1.ChannelStatus
	}{
		{"healthy", 0, []report{obsAt("w1", S("n2", 0), S("n3", 0))}, 5000, active},
		{"both down, not yet down_after", 0,
			[]report{obsAt("w1", S("n2", 0), S("n3", 0), D("n2", 500), D("n3", 600))}, 2100, active},
		{"both down longer than down_after", 0,
			[]report{obsAt("w1", S("n2", 0), S("n3", 0), D("n2", 500), D("n3", 600))}, 2101, failed},
		{"one standby still streaming", 0,
			[]report{obsAt("w1", S("n2", 0), S("n3", 0), D("n2", 500), S("n3", 5000))}, 6000, active},
		{"not streaming counts as down", 0,
			[]report{obsAt("w1", notStreaming("n2", 0), notStreaming("n3", 0))}, 2000, failed},
		{"wrong system counts as down", 0,
			[]report{obsAt("w1", wrong("n2", 0), wrong("n3", 0))}, 2000, failed},
		{"a wrong system seen by one witness outweighs another's streaming view", 0,
			[]report{obsAt("w1", wrong("n2", 0), wrong("n3", 0)), obsAt("w2", S("n2", 100), S("n3", 100))}, 2000, failed},
		{"one witness seeing it streaming keeps it up", 0,
			[]report{obsAt("w1", D("n2", 0), D("n3", 0), D("n2", 2000), D("n3", 2000)), obsAt("w2", S("n2", 1900), S("n3", 1900))}, 3000, active},
		{"a silent witness's old healthy view does not keep it up", 0,
			[]report{obsAt("w3", S("n2", 0), S("n3", 0)), obsAt("w1", D("n2", 500), D("n3", 500), D("n2", 1000), D("n3", 1000))}, 2100, failed},
		{"down since the first unhealthy report after the last healthy one", 0,
			[]report{obsAt("w1", D("n2", 0), D("n3", 0)), obsAt("w2", S("n2", 1000), S("n3", 1000)),
				obsAt("w1", D("n2", 1500), D("n3", 1500))}, 2900, active},
		{"recovers at once", failed,
			[]report{obsAt("w1", D("n2", 0), D("n3", 0), S("n3", 3000))}, 3100, active},
		{"never observed standbys are not failed", 0, nil, 9000, active},
		{"rebuilding stays while down", rebuilding,
			[]report{obsAt("w1", D("n2", 0), D("n3", 0))}, 9000, rebuilding},
		{"rebuilding ends once a standby streams within the threshold", rebuilding,
			[]report{obsAt("w1", D("n2", 0), S("n3", 1000))}, 2000, active},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := ordersState()
			if tt.committed != 0 {
				st.Channels = []*regentv1.ReplicationChannel{{Id: 1, Cluster: "orders", PrimaryRegion: "us-east",
					SecondaryRegion: "eu-west", Status: tt.committed}}
				st.NextChannelId = 2
			}
			a := NewAggregator()
			// The primary is seen, so every case has observations of the cluster.
			a.Add("w1", []*regentv1.Observation{primaryObs("orders", "n1", at(0), 100)})
			feed(a, tt.reports...)
			cmd := a.Channels(st, at(tt.now))
			got := chanOf(cmd.GetChannels(), "orders", "us-east", "eu-west")
			if got == nil {
				if tt.want == tt.committed {
					return // unchanged, not sent
				}
				t.Fatalf("channel not sent: %v", cmd)
			}
			if got.Status != tt.want {
				t.Fatalf("status = %s, want %s", got.Status, tt.want)
			}
		})
	}
}

func TestRebuildingNeedsLagBelowThreshold(t *testing.T) {
	st := ordersState()
	st.Channels = []*regentv1.ReplicationChannel{{Id: 1, Cluster: "orders", PrimaryRegion: "us-east", SecondaryRegion: "eu-west", Status: rebuilding}}
	st.NextChannelId = 2
	for _, tt := range []struct {
		lag  time.Duration
		want regentv1.ChannelStatus
	}{{59 * time.Second, active}, {60 * time.Second, rebuilding}, {300 * time.Second, rebuilding}} {
		a := NewAggregator()
		a.Add("w1", []*regentv1.Observation{
			withHB(primaryObs("orders", "n1", at(1000), 1000), at(1000)),
			withHB(standbyObs("orders", "n2", at(1000), 500), at(1000).Add(-tt.lag)),
		})
		got := chanOf(a.Channels(st, at(2000)).GetChannels(), "orders", "us-east", "eu-west")
		if got.GetStatus() != tt.want {
			t.Errorf("lag %v: status %s, want %s", tt.lag, got.GetStatus(), tt.want)
		}
	}
}

func TestChannelSet(t *testing.T) {
	t.Run("a cluster without observations is left alone", func(t *testing.T) {
		st := ordersState()
		st.Channels = []*regentv1.ReplicationChannel{{Id: 1, Cluster: "orders", PrimaryRegion: "x", SecondaryRegion: "y"}}
		st.NextChannelId = 2
		a := NewAggregator()
		a.Add("w1", []*regentv1.Observation{primaryObs("other", "n1", at(0), 1)})
		if cmd := a.Channels(st, at(1000)); cmd != nil {
			t.Fatalf("Channels = %v", cmd)
		}
	})
	t.Run("complete set, sorted, replacing stale channels", func(t *testing.T) {
		st := ordersState()
		st.Channels = []*regentv1.ReplicationChannel{{Id: 4, Cluster: "orders", PrimaryRegion: "eu-west", SecondaryRegion: "us-east"}}
		st.NextChannelId = 5
		a := NewAggregator()
		a.Add("w1", []*regentv1.Observation{primaryObs("orders", "n1", at(0), 1)})
		cmd := a.Channels(st, at(1000))
		var keys []string
		for _, ch := range cmd.GetChannels() {
			keys = append(keys, ch.PrimaryRegion+"→"+ch.SecondaryRegion)
		}
		if strings.Join(cmd.GetClusters(), ",") != "orders" || strings.Join(keys, " ") != "us-east→ap-south us-east→eu-west us-east→us-east" {
			t.Fatalf("clusters %v, channels %v", cmd.GetClusters(), keys)
		}
	})
	t.Run("primary missing from the nodes: left alone", func(t *testing.T) {
		st := ordersState()
		st.Clusters[0].Primary = "n9"
		a := NewAggregator()
		a.Add("w1", []*regentv1.Observation{standbyObs("orders", "n2", at(0), 1)})
		if cmd := a.Channels(st, at(1000)); len(cmd.GetClusters()) != 0 || len(cmd.GetChannels()) != 0 {
			t.Fatalf("Channels = %v", cmd)
		}
	})
}

// TestChannelsCommitCycle runs Changes and Channels against a real FSM: a committed batch
// makes the next Channels nil; last_seen_at alone is refreshed after SeenRefresh; a node
// removed from the spec drops its channel; LSN-only changes go with Channels, not Changes.
func TestChannelsCommitCycle(t *testing.T) {
	c := newCluster(t, ordersSpec())
	a := NewAggregator()
	observe := func(ms int64, lsn uint64) {
		for _, w := range []string{"w1", "w2", "w3"} {
			a.Add(w, []*regentv1.Observation{
				primaryObs("orders", "n1", at(ms), lsn), standbyObs("orders", "n2", at(ms), lsn),
				standbyObs("orders", "n3", at(ms), lsn), standbyObs("orders", "n4", at(ms), lsn), standbyObs("orders", "n5", at(ms), lsn),
			})
		}
	}
	observe(0, 100)
	if ch, cs := c.round(a, at(100)); ch != 1 || cs != 1 {
		t.Fatalf("first round committed %d changes, %d channel batches; want 1, 1", ch, cs)
	}
	st := c.state()
	if len(st.Channels) != 3 || st.Channels[0].Id != 1 || statusOf(st, "orders", "n1").Role != regentv1.NodeRole_NODE_ROLE_PRIMARY {
		t.Fatalf("state after the first round: %v", st)
	}
	if len(statusOf(st, "orders", "n2").Votes) != 3 {
		t.Fatalf("votes of n2: %v", statusOf(st, "orders", "n2").Votes)
	}

	observe(500, 100)
	if ch, cs := c.round(a, at(600)); ch != 0 || cs != 0 {
		t.Fatalf("unchanged round committed %d, %d", ch, cs)
	}

	// LSNs move: no Changes, one Channels batch with nodes and figures.
	observe(1000, 200)
	if cmd := a.Changes(c.state(), at(1100)); cmd != nil {
		t.Fatalf("LSN-only change in Changes: %v", cmd)
	}
	cmd := a.Channels(c.state(), at(1100))
	if cmd == nil || len(cmd.Nodes) != 5 {
		t.Fatalf("Channels = %v, want the five nodes' LSNs", cmd)
	}
	c.commit(regentv1.CommandType_COMMAND_TYPE_UPDATE_CHANNELS, cmd, at(1100))
	if n1 := statusOf(c.state(), "orders", "n1"); n1.CurrentLsn != 200 || !n1.UpdatedAt.AsTime().Equal(at(1100)) {
		t.Fatalf("n1 after the batch: %v", n1)
	}

	// Idle: only the last_seen_at refresh, once SeenRefresh has passed since it was set.
	entries := 0
	for ms := int64(1500); ms <= 1000+SeenRefresh.Milliseconds()+500; ms += 500 {
		observe(ms, 200)
		ch, cs := c.round(a, at(ms+100))
		entries += ch + cs
		if cs == 1 && ms < 1000+SeenRefresh.Milliseconds() {
			t.Fatalf("Channels at %dms, before last_seen_at needed a refresh", ms)
		}
	}
	if entries != 1 {
		t.Fatalf("%d entries over %v of idle rounds, want 1 (the last_seen_at refresh)", entries, SeenRefresh)
	}

	// Dropping n5 (ap-south) from the spec drops its channel.
	sp := ordersSpec()
	sp.Nodes = sp.Nodes[:4]
	c.commit(regentv1.CommandType_COMMAND_TYPE_APPLY_CLUSTER, &regentv1.ApplyClusterCommand{Spec: sp}, at(20000))
	if _, cs := c.round(a, at(20000)); cs != 1 {
		t.Fatal("no channel batch after a region went away")
	}
	if st := c.state(); len(st.Channels) != 2 || chanOf(st.Channels, "orders", "us-east", "ap-south") != nil {
		t.Fatalf("channels = %v", st.Channels)
	}
}

// A region whose standbys no longer answer lags by at least the time since one was last seen;
// the figure does not come from the primary's write rate.
func TestChannelLagOfAnUnreachableRegionCountsFromLastSeen(t *testing.T) {
	a := NewAggregator()
	st := ordersState()
	feed(a, report{"w1", []*regentv1.Observation{
		primaryObs("orders", "n1", at(0), 1000), standbyObs("orders", "n5", at(0), 900),
	}})
	feed(a, report{"w1", []*regentv1.Observation{
		primaryObs("orders", "n1", at(10000), 5000), downObs("orders", "n5", at(10000), "refused"),
		primaryObs("orders", "n1", at(30000), 90000), downObs("orders", "n5", at(30000), "refused"),
	}})
	cmd := a.Channels(st, at(30000))
	if cmd == nil {
		t.Fatal("no channel figures")
	}
	ch := chanOf(cmd.Channels, "orders", "us-east", "ap-south")
	if ch == nil {
		t.Fatalf("no us-east → ap-south channel in %v", cmd.Channels)
	}
	if ch.GetLagSeconds() != 30 || ch.GetEstimatedLagSeconds() != 30 {
		t.Errorf("lag %ds (estimated %.1f); want 30 s since pg-ap was last seen", ch.GetLagSeconds(), ch.GetEstimatedLagSeconds())
	}
}
