package coordinator

import (
	"fmt"
	"sync"
	"testing"
	"time"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

var (
	witnesses = []string{"w1", "w2", "w3"}
	regions   = []string{"us-east", "eu-west", "ap-south"}
)

func clusterName(i int) string { return fmt.Sprintf("cluster-%04d", i) }

// fleetSpec is a cluster with n1 (primary, us-east), n2 (eu-west) and n3 (ap-south).
func fleetSpec(i int) *regentv1.ClusterSpec {
	s := &regentv1.ClusterSpec{Name: clusterName(i), Primary: "n1"}
	for j, r := range regions {
		s.Nodes = append(s.Nodes, &regentv1.NodeSpec{Name: fmt.Sprintf("n%d", j+1), Region: r, Host: fmt.Sprintf("10.%d.%d.%d", i/250, i%250, j), Port: 5432})
	}
	return s
}

// fleetReports returns each witness's report for interval k (probe_interval 500 ms) of
// clusters 0..n-1. A busy cluster writes 1 MB per interval and gets a heartbeat each
// second; its standbys are one interval behind. An idle cluster writes nothing.
func fleetReports(n, k int, busy func(i int) bool) []report {
	t := at(int64(k) * 500)
	var out []report
	for wi, w := range witnesses {
		seen := t.Add(time.Duration(wi) * time.Millisecond) // witnesses probe at slightly different times
		obs := make([]*regentv1.Observation, 0, 3*n)
		for i := range n {
			c := clusterName(i)
			lsn, replay := uint64(1<<30), uint64(1<<30)
			var hb, replayedHB time.Time
			if busy(i) {
				lsn += uint64(k) << 20
				replay = lsn - 1<<20
				hb, replayedHB = t.Truncate(time.Second), t.Add(-500*time.Millisecond).Truncate(time.Second)
			}
			p := primaryObs(c, "n1", seen, lsn)
			s2, s3 := standbyObs(c, "n2", seen, replay), standbyObs(c, "n3", seen, replay)
			if !hb.IsZero() {
				withHB(p, hb)
				withHB(s2, replayedHB)
				withHB(s3, replayedHB)
			}
			obs = append(obs, p, s2, s3)
		}
		out = append(out, report{w, obs})
	}
	return out
}

// TestSteadyStateLogGrowth: 100 clusters × 3 nodes × 3 witnesses over 20 intervals. After
// the first round nothing flips, so Changes stays nil; Channels makes at most one entry per
// interval, and that entry carries only the clusters whose figures moved.
func TestSteadyStateLogGrowth(t *testing.T) {
	const clusters, intervals = 100, 20
	for _, tc := range []struct {
		name string
		busy func(int) bool
	}{
		{"every cluster busy", func(int) bool { return true }},
		{"one in ten busy", func(i int) bool { return i%10 == 0 }},
		{"all idle", func(int) bool { return false }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			specs := make([]*regentv1.ClusterSpec, clusters)
			busyCount := 0
			for i := range specs {
				specs[i] = fleetSpec(i)
				if tc.busy(i) {
					busyCount++
				}
			}
			c := newCluster(t, specs...)
			a := NewAggregator()
			channelEntries := 0
			for k := range intervals {
				feed(a, fleetReports(clusters, k, tc.busy)...)
				now := at(int64(k)*500 + 100)
				chg := a.Changes(c.state(), now)
				if k == 0 {
					if chg == nil || len(chg.Votes) != clusters*3*3 || len(chg.Nodes) != clusters*3 {
						t.Fatalf("first round: %d votes, %d nodes; want %d, %d", len(chg.GetVotes()), len(chg.GetNodes()), clusters*9, clusters*3)
					}
					c.commit(regentv1.CommandType_COMMAND_TYPE_RECORD_OBSERVATIONS, chg, now)
				} else if chg != nil {
					t.Fatalf("interval %d: Changes = %d votes, %d nodes; want nil", k, len(chg.Votes), len(chg.Nodes))
				}
				cmd := a.Channels(c.state(), now)
				if cmd == nil {
					continue
				}
				channelEntries++
				switch {
				case k == 0:
					if len(cmd.Clusters) != clusters || len(cmd.Channels) != 2*clusters {
						t.Fatalf("first batch: %d clusters, %d channels", len(cmd.Clusters), len(cmd.Channels))
					}
				case len(cmd.Clusters) > busyCount || len(cmd.Nodes) > 3*busyCount:
					t.Fatalf("interval %d: batch with %d clusters and %d nodes, but only %d clusters are busy",
						k, len(cmd.Clusters), len(cmd.Nodes), busyCount)
				}
				c.commit(regentv1.CommandType_COMMAND_TYPE_UPDATE_CHANNELS, cmd, now)
			}
			if channelEntries > intervals {
				t.Fatalf("%d channel entries in %d intervals", channelEntries, intervals)
			}
			if busyCount == 0 && channelEntries != 1 {
				t.Fatalf("idle fleet: %d channel entries, want only the first", channelEntries)
			}
			if busyCount > 0 && channelEntries < intervals-1 {
				t.Fatalf("busy fleet: %d channel entries in %d intervals; moving LSNs should be recorded", channelEntries, intervals)
			}
			st := c.state()
			if len(st.Channels) != 2*clusters {
				t.Fatalf("%d channels in the state, want %d", len(st.Channels), 2*clusters)
			}
			for _, ch := range st.Channels {
				if ch.Status != active || ch.LagSeconds > 1 {
					t.Fatalf("steady channel %v", ch)
				}
			}
		})
	}
}

// TestConcurrentUse: witnesses report while the leader computes (run with -race).
func TestConcurrentUse(t *testing.T) {
	const clusters = 20
	specs := make([]*regentv1.ClusterSpec, clusters)
	for i := range specs {
		specs[i] = fleetSpec(i)
	}
	st := newCluster(t, specs...).state()
	a := NewAggregator()
	busy := func(int) bool { return true }
	var wg sync.WaitGroup
	for _, w := range witnesses {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range 30 {
				for _, r := range fleetReports(clusters, k, busy) {
					if r.witness == w {
						a.Add(w, r.obs)
					}
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for k := range 30 {
			a.Changes(st, at(int64(k)*500))
			a.Channels(st, at(int64(k)*500))
			a.Retain(st)
		}
	}()
	wg.Wait()
	if a.Changes(st, at(20000)) == nil || a.Channels(st, at(20000)) == nil {
		t.Fatal("no commands after concurrent reports")
	}
}

// BenchmarkAggregate1000Clusters: one leader interval for 1,000 clusters of 3 nodes seen
// by 3 witnesses — 3 reports of 3,000 observations, then Changes and Channels against the
// committed state.
func BenchmarkAggregate1000Clusters(b *testing.B) {
	const clusters = 1000
	specs := make([]*regentv1.ClusterSpec, clusters)
	for i := range specs {
		specs[i] = fleetSpec(i)
	}
	c := newCluster(b, specs...)
	a := NewAggregator()
	busy := func(i int) bool { return i%2 == 0 }
	// Commit a first round so that the state holds votes, facts and channels.
	feed(a, fleetReports(clusters, 0, busy)...)
	c.round(a, at(100))
	st := c.state()
	rounds := make([][]report, 16)
	for k := range rounds {
		rounds[k] = fleetReports(clusters, k+1, busy)
	}
	b.ReportAllocs()
	k := 0
	for b.Loop() {
		// Observation times must keep moving forward, or Add drops them as old.
		shift := time.Duration(k/len(rounds)) * 8 * time.Second
		r := rounds[k%len(rounds)]
		if shift > 0 {
			b.StopTimer()
			for _, rep := range r {
				for _, o := range rep.obs {
					o.At = ts(o.At.AsTime().Add(8 * time.Second))
				}
			}
			b.StartTimer()
		}
		feed(a, r...)
		now := at(int64(k+1)*500 + 100).Add(shift)
		if cmd := a.Changes(st, now); cmd != nil {
			b.Fatalf("Changes in steady state: %d votes, %d nodes", len(cmd.Votes), len(cmd.Nodes))
		}
		if cmd := a.Channels(st, now); cmd == nil {
			b.Fatal("Channels = nil with moving LSNs")
		}
		k++
	}
}
