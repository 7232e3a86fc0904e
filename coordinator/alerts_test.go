package coordinator

import (
	"fmt"
	"strings"
	"testing"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

func TestAlerts(t *testing.T) {
	ch := func(cluster, pr, sr string, st regentv1.ChannelStatus, lag int64) *regentv1.ReplicationChannel {
		return &regentv1.ReplicationChannel{Cluster: cluster, PrimaryRegion: pr, SecondaryRegion: sr, Status: st, LagSeconds: lag,
			LagBytes: uint64(lag) * 1000}
	}
	orders := func(st regentv1.ChannelStatus, lag int64) *regentv1.ReplicationChannel {
		return ch("orders", "us-east", "eu-west", st, lag)
	}
	policies := map[string]*regentv1.Policy{
		"orders":  {LagAlertThresholdMs: 60000},
		"billing": {LagAlertThresholdMs: 1500},
	}
	tests := []struct {
		name       string
		prev, next []*regentv1.ReplicationChannel
		want       []string // kind: message
	}{
		{"nothing changed", []*regentv1.ReplicationChannel{orders(active, 10)}, []*regentv1.ReplicationChannel{orders(active, 12)}, nil},
		{"lag crosses the threshold",
			[]*regentv1.ReplicationChannel{orders(active, 60)}, []*regentv1.ReplicationChannel{orders(active, 75)},
			[]string{"lag_over_threshold: Replication lag 75s exceeds threshold 60s on channel orders us-east→eu-west"}},
		{"still over: no repeat",
			[]*regentv1.ReplicationChannel{orders(active, 75)}, []*regentv1.ReplicationChannel{orders(active, 90)}, nil},
		{"lag recovers",
			[]*regentv1.ReplicationChannel{orders(active, 75)}, []*regentv1.ReplicationChannel{orders(active, 60)},
			[]string{"lag_recovered: Replication lag 60s is back within threshold 60s on channel orders us-east→eu-west"}},
		{"over and lagging at once",
			[]*regentv1.ReplicationChannel{orders(active, 30)}, []*regentv1.ReplicationChannel{orders(lagging, 130)},
			[]string{"lag_over_threshold: Replication lag 130s exceeds threshold 60s on channel orders us-east→eu-west",
				"status_changed: Channel orders us-east→eu-west is lagging (was active); lag 130s, 130000 bytes"}},
		{"failed",
			[]*regentv1.ReplicationChannel{orders(active, 0)}, []*regentv1.ReplicationChannel{orders(failed, 0)},
			[]string{"status_changed: Channel orders us-east→eu-west is failed (was active); lag 0s, 0 bytes"}},
		{"a new active channel is no news", nil, []*regentv1.ReplicationChannel{orders(active, 0)}, nil},
		{"a new channel that is already failed",
			nil, []*regentv1.ReplicationChannel{orders(failed, 0)},
			[]string{"status_changed: Channel orders us-east→eu-west is failed (new); lag 0s, 0 bytes"}},
		{"a new channel already over the threshold",
			nil, []*regentv1.ReplicationChannel{orders(active, 61)},
			[]string{"lag_over_threshold: Replication lag 61s exceeds threshold 60s on channel orders us-east→eu-west"}},
		{"a vanished channel is no news", []*regentv1.ReplicationChannel{orders(failed, 500)}, nil, nil},
		{"per-cluster threshold, fractional",
			[]*regentv1.ReplicationChannel{ch("billing", "a", "b", active, 1)}, []*regentv1.ReplicationChannel{ch("billing", "a", "b", active, 2)},
			[]string{"lag_over_threshold: Replication lag 2s exceeds threshold 1.5s on channel billing a→b"}},
		{"no policy: the default threshold",
			[]*regentv1.ReplicationChannel{ch("misc", "a", "b", active, 60)}, []*regentv1.ReplicationChannel{ch("misc", "a", "b", active, 61)},
			[]string{"lag_over_threshold: Replication lag 61s exceeds threshold 60s on channel misc a→b"}},
		{"matched by key across clusters, in next's order",
			[]*regentv1.ReplicationChannel{ch("billing", "a", "b", active, 0), orders(active, 0)},
			[]*regentv1.ReplicationChannel{orders(rebuilding, 0), ch("billing", "a", "b", failed, 0)},
			[]string{"status_changed: Channel orders us-east→eu-west is rebuilding (was active); lag 0s, 0 bytes",
				"status_changed: Channel billing a→b is failed (was active); lag 0s, 0 bytes"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, a := range Alerts(tt.prev, tt.next, policies) {
				got = append(got, a.Kind+": "+a.Message)
			}
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Fatalf("alerts:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}

func TestAlertFields(t *testing.T) {
	prev := []*regentv1.ReplicationChannel{{Cluster: "orders", PrimaryRegion: "us-east", SecondaryRegion: "eu-west", Status: active, LagSeconds: 10}}
	next := []*regentv1.ReplicationChannel{{Cluster: "orders", PrimaryRegion: "us-east", SecondaryRegion: "eu-west", Status: lagging,
		LagSeconds: 130, LagBytes: 77}}
	got := Alerts(prev, next, nil)
	want := []Alert{
		{Kind: AlertLagOverThreshold, Cluster: "orders", PrimaryRegion: "us-east", SecondaryRegion: "eu-west", From: lagging, To: lagging,
			LagSeconds: 130, LagBytes: 77, ThresholdSeconds: 60,
			Message: "Replication lag 130s exceeds threshold 60s on channel orders us-east→eu-west"},
		{Kind: AlertStatusChanged, Cluster: "orders", PrimaryRegion: "us-east", SecondaryRegion: "eu-west", From: active, To: lagging,
			LagSeconds: 130, LagBytes: 77, ThresholdSeconds: 60,
			Message: "Channel orders us-east→eu-west is lagging (was active); lag 130s, 77 bytes"},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("alerts =\n%+v\nwant\n%+v", got, want)
	}
}

// A failed channel's lag swings with the primary's write rate; it must not raise lag alerts.
func TestNoLagAlertsOnAFailedChannel(t *testing.T) {
	ch := func(status regentv1.ChannelStatus, lag int64) []*regentv1.ReplicationChannel {
		return []*regentv1.ReplicationChannel{{Cluster: "orders", PrimaryRegion: "eu-west", SecondaryRegion: "us-east", Status: status, LagSeconds: lag}}
	}
	failed, active := regentv1.ChannelStatus_CHANNEL_STATUS_FAILED, regentv1.ChannelStatus_CHANNEL_STATUS_ACTIVE
	pol := map[string]*regentv1.Policy{"orders": {LagAlertThresholdMs: 60000}}
	if got := Alerts(ch(failed, 68), ch(failed, 10), pol); len(got) != 0 {
		t.Errorf("failed→failed with a swinging lag: %v", got)
	}
	if got := Alerts(ch(failed, 10), ch(failed, 107), pol); len(got) != 0 {
		t.Errorf("failed→failed with a swinging lag: %v", got)
	}
	got := Alerts(ch(failed, 107), ch(active, 0), pol)
	if len(got) != 1 || got[0].Kind != AlertStatusChanged {
		t.Errorf("failed→active: %v, want only the status change", got)
	}
}
