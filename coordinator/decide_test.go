package coordinator

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
	"github.com/regentdb/regent/spec"
)

// decideNow is the time of every Decide in these tests; down_after is the default 1.5s.
var decideNow = t0.Add(time.Hour)

// ago is decideNow minus d.
func ago(d time.Duration) time.Time { return decideNow.Add(-d) }

// setVotes replaces a node's votes: one per witness, all with the same value and since.
func setVotes(st *regentv1.State, node string, reachable bool, since time.Time, witnesses ...string) {
	ns := statusOf(st, "orders", node)
	ns.Votes = nil
	for _, w := range witnesses {
		ns.Votes = append(ns.Votes, &regentv1.Vote{Witness: w, Reachable: reachable, Since: ts(since)})
	}
	slices.SortFunc(ns.Votes, func(a, b *regentv1.Vote) int { return strings.Compare(a.Witness, b.Witness) })
}

// setVote sets one witness's vote on a node.
func setVote(st *regentv1.State, node, witness string, reachable bool, since time.Time) {
	ns := statusOf(st, "orders", node)
	for _, v := range ns.Votes {
		if v.Witness == witness {
			v.Reachable, v.Since = reachable, ts(since)
			return
		}
	}
	ns.Votes = append(ns.Votes, &regentv1.Vote{Witness: witness, Reachable: reachable, Since: ts(since)})
	slices.SortFunc(ns.Votes, func(a, b *regentv1.Vote) int { return strings.Compare(a.Witness, b.Witness) })
}

func members(st *regentv1.State, nameRegion ...string) {
	st.Members = nil
	for i := 0; i+1 < len(nameRegion); i += 2 {
		st.Members = append(st.Members, &regentv1.Member{Name: nameRegion[i], Id: "id-" + nameRegion[i], Region: nameRegion[i+1]})
	}
}

// downState is orders (ordersState) whose primary n1 (us-east, LSN 100000) the three
// witnesses w1 (us-east), w2 (eu-west) and w3 (ap-south) have seen unreachable for 1.6s.
// Standbys: n2 (eu-west, received 99000), n3 (eu-west, 98000), n4 (us-east, unreachable
// with its region), n5 (ap-south, 90000); all replicas, none streaming any more. Channels
// from us-east lag 2s (eu-west), 1s (us-east) and 3s (ap-south).
func downState() *regentv1.State {
	st := ordersState()
	members(st, "w1", "us-east", "w2", "eu-west", "w3", "ap-south")
	all := []string{"w1", "w2", "w3"}
	p := statusOf(st, "orders", "n1")
	p.Role, p.CurrentLsn, p.Timeline = regentv1.NodeRole_NODE_ROLE_PRIMARY, 100000, 1
	setVotes(st, "n1", false, ago(1600*time.Millisecond), all...)
	for name, lsn := range map[string]uint64{"n2": 99000, "n3": 98000, "n4": 99900, "n5": 90000} {
		ns := statusOf(st, "orders", name)
		ns.Role, ns.ReceivedLsn, ns.ReplayLsn, ns.Timeline = regentv1.NodeRole_NODE_ROLE_REPLICA, lsn, lsn-100, 1
		setVotes(st, name, true, ago(time.Hour), all...)
	}
	setVotes(st, "n4", false, ago(1600*time.Millisecond), all...)
	st.Channels = []*regentv1.ReplicationChannel{
		{Id: 1, Cluster: "orders", PrimaryRegion: "us-east", SecondaryRegion: "eu-west", LagSeconds: 2},
		{Id: 2, Cluster: "orders", PrimaryRegion: "us-east", SecondaryRegion: "us-east", LagSeconds: 1},
		{Id: 3, Cluster: "orders", PrimaryRegion: "us-east", SecondaryRegion: "ap-south", LagSeconds: 3},
	}
	st.NextChannelId = 4
	return st
}

func ordersOf(st *regentv1.State) *regentv1.Cluster { return st.Clusters[0] }

func completedEvent(id uint64, cluster string, step regentv1.FailoverStep, completed time.Time) *regentv1.FailoverEvent {
	ev := &regentv1.FailoverEvent{Id: id, Cluster: cluster, Step: step, FromNode: "n9", ToNode: "n1"}
	if !completed.IsZero() {
		ev.CompletedAt = timestamppb.New(completed)
	}
	return ev
}

const allDownReason = "primary n1 unreachable from w1 (us-east), w2 (eu-west), w3 (ap-south) for 1.6s"

func TestDecide(t *testing.T) {
	failover := Decision{Down: true, Failover: true, Candidate: "n2", Reason: allDownReason, OldPrimaryLSN: 100000, EstimatedLossBytes: 1000}
	refused := func(refusal string) Decision {
		return Decision{Down: true, Reason: allDownReason, Refusal: refusal, OldPrimaryLSN: 100000}
	}
	streaming := func(node, upstream string) func(*regentv1.State) {
		return func(st *regentv1.State) {
			ns := statusOf(st, "orders", node)
			ns.WalReceiverStatus, ns.Upstream = "streaming", upstream
		}
	}
	tests := []struct {
		name    string
		cluster string
		mutate  func(st *regentv1.State)
		want    Decision
	}{
		{"all witnesses, long enough: fail over to the most advanced standby", "orders", nil, failover},
		{"unknown cluster", "nope", nil, Decision{}},
		{"no witnesses", "orders", func(st *regentv1.State) { st.Members = nil }, Decision{}},
		{"no primary status", "orders", func(st *regentv1.State) { ordersOf(st).Primary = "n9" }, Decision{}},
		{"primary reachable", "orders", func(st *regentv1.State) { setVotes(st, "n1", true, ago(time.Minute), "w1", "w2", "w3") }, Decision{}},
		{"minority of witnesses", "orders", func(st *regentv1.State) {
			setVote(st, "n1", "w2", true, ago(time.Minute))
			setVote(st, "n1", "w3", true, ago(time.Minute))
		}, Decision{}},
		{"no votes from some witnesses: still a minority", "orders", func(st *regentv1.State) {
			setVotes(st, "n1", false, ago(time.Minute), "w1")
		}, Decision{}},
		{"votes too recent", "orders", func(st *regentv1.State) { setVotes(st, "n1", false, ago(time.Second), "w1", "w2", "w3") }, Decision{}},
		{"one vote too recent: the other two are a majority", "orders", func(st *regentv1.State) {
			setVote(st, "n1", "w1", false, ago(time.Second))
			setVote(st, "n1", "w3", false, ago(3*time.Second))
		}, Decision{Down: true, Failover: true, Candidate: "n2", Reason: "primary n1 unreachable from w2 (eu-west), w3 (ap-south) for 1.6s",
			OldPrimaryLSN: 100000, EstimatedLossBytes: 1000}},
		{"down exactly down_after ago counts", "orders", func(st *regentv1.State) {
			setVotes(st, "n1", false, ago(1500*time.Millisecond), "w1", "w2", "w3")
		}, Decision{Down: true, Failover: true, Candidate: "n2", Reason: strings.Replace(allDownReason, "1.6s", "1.5s", 1),
			OldPrimaryLSN: 100000, EstimatedLossBytes: 1000}},
		{"down_after from the policy", "orders", func(st *regentv1.State) {
			ordersOf(st).Policy = spec.WithDefaults(&regentv1.Policy{DownAfterMs: 2000})
		}, Decision{}},
		{"a vote without since does not count", "orders", func(st *regentv1.State) {
			statusOf(st, "orders", "n1").Votes[1].Since = nil
			setVote(st, "n1", "w3", true, ago(time.Minute))
		}, Decision{}},
		{"votes of removed witnesses do not count", "orders", func(st *regentv1.State) {
			members(st, "w1", "us-east", "w2", "eu-west", "w4", "ap-south")
			setVote(st, "n1", "w2", true, ago(time.Minute))
			setVote(st, "n1", "w9", false, ago(time.Minute))
		}, Decision{}},
		{"a removed witness's vote does not make a quorum from two regions", "orders", func(st *regentv1.State) {
			members(st, "w1", "us-east", "w2", "us-east", "w4", "eu-west")
			setVote(st, "n1", "w4", true, ago(time.Minute))
		}, Decision{Down: true, Reason: "primary n1 unreachable from w1 (us-east), w2 (us-east) for 1.6s", OldPrimaryLSN: 100000,
			Refusal: "no quorum of witnesses from two regions: only w1 (us-east), w2 (us-east) see primary n1 unreachable"}},
		{"majority from one region only", "orders", func(st *regentv1.State) {
			members(st, "w1", "eu-west", "w2", "eu-west", "w3", "us-east")
			setVote(st, "n1", "w3", true, ago(time.Minute))
		}, Decision{Down: true, Reason: "primary n1 unreachable from w1 (eu-west), w2 (eu-west) for 1.6s", OldPrimaryLSN: 100000,
			Refusal: "no quorum of witnesses from two regions: only w1 (eu-west), w2 (eu-west) see primary n1 unreachable"}},
		{"five witnesses, three from two regions", "orders", func(st *regentv1.State) {
			members(st, "w1", "us-east", "w2", "eu-west", "w3", "ap-south", "w4", "eu-west", "w5", "us-east")
			setVotes(st, "n1", false, ago(2*time.Second), "w2", "w4", "w5")
			setVote(st, "n1", "w1", true, ago(time.Minute))
		}, Decision{Down: true, Failover: true, Candidate: "n2", Reason: "primary n1 unreachable from w2 (eu-west), w4 (eu-west), w5 (us-east) for 2s",
			OldPrimaryLSN: 100000, EstimatedLossBytes: 1000}},

		{"a standby still streams from the primary", "orders", streaming("n3", "10.0.0.1:5432"),
			refused("standby n3 still streams from the primary; the witnesses' view is partitioned")},
		{"two standbys still stream", "orders", func(st *regentv1.State) {
			streaming("n3", "10.0.0.1:5432")(st)
			streaming("n5", "10.0.0.1")(st) // no port: 5432
		}, refused("standbys n3, n5 still stream from the primary; the witnesses' view is partitioned")},
		{"localhost and 127.0.0.1 are one host", "orders", func(st *regentv1.State) {
			st.Clusters[0].Nodes[0].Host = "127.0.0.1"
			streaming("n2", "LOCALHOST:5432")(st)
		}, refused("standby n2 still streams from the primary; the witnesses' view is partitioned")},
		{"streaming from another port is not from the primary", "orders", streaming("n3", "10.0.0.1:5433"), failover},
		{"streaming from another host is not from the primary", "orders", streaming("n3", "10.0.0.2:5432"), failover},
		{"catching up is not streaming", "orders", func(st *regentv1.State) {
			streaming("n3", "10.0.0.1:5432")(st)
			statusOf(st, "orders", "n3").WalReceiverStatus = "catchup"
		}, failover},
		{"a streaming standby that a majority cannot reach does not count", "orders", func(st *regentv1.State) {
			streaming("n3", "10.0.0.1:5432")(st)
			setVote(st, "n3", "w2", false, ago(time.Minute))
			setVote(st, "n3", "w3", false, ago(time.Minute))
		}, failover},
		{"a streaming standby reached only by removed witnesses does not count", "orders", func(st *regentv1.State) {
			streaming("n3", "10.0.0.1:5432")(st)
			setVotes(st, "n3", true, ago(time.Minute), "w1", "w8", "w9")
		}, failover},
		{"a wrong-system node streaming does not count", "orders", func(st *regentv1.State) {
			streaming("n3", "10.0.0.1:5432")(st)
			statusOf(st, "orders", "n3").WrongSystem = true
		}, failover},

		{"paused", "orders", func(st *regentv1.State) { ordersOf(st).Paused, ordersOf(st).PauseReason = true, "maintenance" }, refused("paused: maintenance")},
		{"paused without a reason", "orders", func(st *regentv1.State) { ordersOf(st).Paused = true }, refused("paused")},
		{"cooldown after the last completed failover", "orders", func(st *regentv1.State) {
			st.FailoverEvents = []*regentv1.FailoverEvent{
				completedEvent(1, "orders", regentv1.FailoverStep_FAILOVER_STEP_COMPLETED, ago(time.Hour)),
				completedEvent(3, "orders", regentv1.FailoverStep_FAILOVER_STEP_COMPLETED, ago(time.Minute)),
				completedEvent(4, "orders", regentv1.FailoverStep_FAILOVER_STEP_ABORTED, time.Time{}),
			}
			st.NextEventId = 5
		}, refused("cooldown until " + ago(time.Minute).Add(5*time.Minute).Format(time.RFC3339) + " after failover 3")},
		{"cooldown from the policy has passed", "orders", func(st *regentv1.State) {
			ordersOf(st).Policy = spec.WithDefaults(&regentv1.Policy{CooldownMs: 30000})
			st.FailoverEvents = []*regentv1.FailoverEvent{completedEvent(3, "orders", regentv1.FailoverStep_FAILOVER_STEP_COMPLETED, ago(time.Minute))}
		}, failover},
		{"cooldown ends exactly now", "orders", func(st *regentv1.State) {
			st.FailoverEvents = []*regentv1.FailoverEvent{completedEvent(3, "orders", regentv1.FailoverStep_FAILOVER_STEP_COMPLETED, ago(5*time.Minute))}
		}, failover},
		{"an aborted failover starts no cooldown", "orders", func(st *regentv1.State) {
			ev := completedEvent(3, "orders", regentv1.FailoverStep_FAILOVER_STEP_ABORTED, time.Time{})
			ev.StartedAt = ts(ago(time.Minute))
			st.FailoverEvents = []*regentv1.FailoverEvent{ev}
		}, failover},
		{"another cluster's failover starts no cooldown", "orders", func(st *regentv1.State) {
			st.FailoverEvents = []*regentv1.FailoverEvent{completedEvent(3, "billing", regentv1.FailoverStep_FAILOVER_STEP_COMPLETED, ago(time.Minute))}
		}, failover},
		{"a failover runs: no refusal", "orders", func(st *regentv1.State) {
			st.FailoverEvents = []*regentv1.FailoverEvent{completedEvent(3, "orders", regentv1.FailoverStep_FAILOVER_STEP_FENCED, time.Time{})}
			ordersOf(st).Paused = true
		}, Decision{Down: true, Reason: allDownReason, OldPrimaryLSN: 100000}},
		{"another cluster's running failover does not matter", "orders", func(st *regentv1.State) {
			st.FailoverEvents = []*regentv1.FailoverEvent{completedEvent(3, "billing", regentv1.FailoverStep_FAILOVER_STEP_DECIDED, time.Time{})}
		}, failover},

		{"no candidate: every node's reasons", "orders", func(st *regentv1.State) {
			statusOf(st, "orders", "n1").CurrentLsn = 40 << 20 // every standby ~40MB behind
			ordersOf(st).Nodes[2].Tags = []string{"nofailover"}
			statusOf(st, "orders", "n5").WrongSystem = true
			statusOf(st, "orders", "n5").Role = regentv1.NodeRole_NODE_ROLE_UNKNOWN
		}, Decision{Down: true, Reason: allDownReason, OldPrimaryLSN: 40 << 20, Refusal: "no candidate: " +
			"n2: 39.9MB behind the old primary's last LSN, over max_lag_on_failover 16MB; " +
			"n3: tagged nofailover, 39.9MB behind the old primary's last LSN, over max_lag_on_failover 16MB; " +
			"n4: unreachable (0 of 3 witness votes reach it), 39.9MB behind the old primary's last LSN, over max_lag_on_failover 16MB; " +
			"n5: answers with another cluster's system identifier, role is unknown, not replica, 39.9MB behind the old primary's last LSN, over max_lag_on_failover 16MB"}},
		{"no candidate in a one-node cluster", "orders", func(st *regentv1.State) {
			c := ordersOf(st)
			c.Nodes, c.NodeStatus = c.Nodes[:1], c.NodeStatus[:1]
		}, refused("no candidate: cluster orders has no node besides its primary n1")},
		{"a candidate reachable only for removed witnesses is unreachable", "orders", func(st *regentv1.State) {
			for _, n := range []string{"n2", "n3", "n5"} {
				setVotes(st, n, true, ago(time.Hour), "w1", "w8", "w9")
				setVote(st, n, "w2", false, ago(time.Minute))
			}
		}, refused("no candidate: n2: unreachable (1 of 2 witness votes reach it); n3: unreachable (1 of 2 witness votes reach it); " +
			"n4: unreachable (0 of 3 witness votes reach it); n5: unreachable (1 of 2 witness votes reach it)")},
		{"the lag gate picks the next standby", "orders", func(st *regentv1.State) {
			st.Channels[0].LagSeconds = 301 // eu-west: n2 and n3
		}, Decision{Down: true, Failover: true, Candidate: "n5", Reason: allDownReason, OldPrimaryLSN: 100000, EstimatedLossBytes: 10000}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := downState()
			if tt.mutate != nil {
				tt.mutate(st)
			}
			before := proto.Clone(st)
			got := Decide(st, tt.cluster, decideNow)
			if got != tt.want {
				t.Fatalf("Decide:\n got %+v\nwant %+v", got, tt.want)
			}
			if !proto.Equal(before, st) {
				t.Fatal("Decide modified the state")
			}
			if again := Decide(st, tt.cluster, decideNow); again != got {
				t.Fatalf("Decide is not deterministic: %+v then %+v", got, again)
			}
		})
	}
}

// candState is a cluster for ChooseCandidate: primary p (r1) and standbys a, b, c (r2), d
// (r3), all reachable replicas with received LSN 1000, priority 0; old primary LSN 1000.
func candState() (*regentv1.Cluster, []*regentv1.ReplicationChannel) {
	c := &regentv1.Cluster{Name: "orders", Primary: "p", Policy: spec.WithDefaults(&regentv1.Policy{MaxLagOnFailoverBytes: 100, FailoverLagThresholdMs: 60000})}
	for _, n := range []struct{ name, region string }{{"p", "r1"}, {"a", "r2"}, {"b", "r2"}, {"c", "r2"}, {"d", "r3"}} {
		c.Nodes = append(c.Nodes, &regentv1.NodeSpec{Name: n.name, Region: n.region, Host: "h-" + n.name, Port: 5432})
		role := regentv1.NodeRole_NODE_ROLE_REPLICA
		if n.name == "p" {
			role = regentv1.NodeRole_NODE_ROLE_PRIMARY
		}
		c.NodeStatus = append(c.NodeStatus, &regentv1.NodeStatus{Name: n.name, Role: role, ReceivedLsn: 1000, CurrentLsn: 1000,
			Votes: []*regentv1.Vote{{Witness: "w1", Reachable: true}, {Witness: "w2", Reachable: true}, {Witness: "w3", Reachable: true}}})
	}
	slices.SortFunc(c.NodeStatus, func(a, b *regentv1.NodeStatus) int { return strings.Compare(a.Name, b.Name) })
	chs := []*regentv1.ReplicationChannel{
		{Id: 1, Cluster: "orders", PrimaryRegion: "r1", SecondaryRegion: "r2", LagSeconds: 5},
		{Id: 2, Cluster: "orders", PrimaryRegion: "r1", SecondaryRegion: "r3", LagSeconds: 5},
		{Id: 3, Cluster: "billing", PrimaryRegion: "r1", SecondaryRegion: "r3", LagSeconds: 9999},
	}
	return c, chs
}

func nsOf(c *regentv1.Cluster, name string) *regentv1.NodeStatus {
	if ns := statusByName(c, name); ns != nil {
		return ns
	}
	panic("no status " + name)
}

func specOf(c *regentv1.Cluster, name string) *regentv1.NodeSpec {
	if n := specByName(c, name); n != nil {
		return n
	}
	panic("no node " + name)
}

func TestChooseCandidate(t *testing.T) {
	// only leaves node keep as the single possible candidate among a, b, c, d, by marking the
	// others unreachable.
	only := func(keep string) func(c *regentv1.Cluster, chs []*regentv1.ReplicationChannel) {
		return func(c *regentv1.Cluster, chs []*regentv1.ReplicationChannel) {
			for _, n := range []string{"a", "b", "c", "d"} {
				if n != keep {
					nsOf(c, n).Votes = nil
				}
			}
		}
	}
	then := func(fs ...func(c *regentv1.Cluster, chs []*regentv1.ReplicationChannel)) func(c *regentv1.Cluster, chs []*regentv1.ReplicationChannel) {
		return func(c *regentv1.Cluster, chs []*regentv1.ReplicationChannel) {
			for _, f := range fs {
				f(c, chs)
			}
		}
	}
	type mut = func(c *regentv1.Cluster, chs []*regentv1.ReplicationChannel)
	tests := []struct {
		name   string
		mutate mut
		oldLSN uint64
		force  bool
		to     string
		want   string // the node, or the error's text
	}{
		// Ordering.
		{"all equal: lowest name", nil, 1000, false, "", "a"},
		{"highest received LSN first", func(c *regentv1.Cluster, _ []*regentv1.ReplicationChannel) {
			nsOf(c, "c").ReceivedLsn = 1010
			specOf(c, "d").Priority = 9
		}, 1000, false, "", "c"},
		{"replay LSN counts when higher than received", func(c *regentv1.Cluster, _ []*regentv1.ReplicationChannel) {
			nsOf(c, "d").ReceivedLsn, nsOf(c, "d").ReplayLsn = 0, 1020
			nsOf(c, "c").ReceivedLsn = 1010
		}, 1000, false, "", "d"},
		{"then higher priority", func(c *regentv1.Cluster, _ []*regentv1.ReplicationChannel) {
			specOf(c, "b").Priority = 5
			specOf(c, "c").Priority = 7
			specOf(c, "d").Priority = 7
		}, 1000, false, "", "c"},
		{"LSN beats priority", func(c *regentv1.Cluster, _ []*regentv1.ReplicationChannel) {
			specOf(c, "b").Priority = 100
			nsOf(c, "d").ReceivedLsn = 1001
		}, 1000, false, "", "d"},
		{"negative priority loses to zero", func(c *regentv1.Cluster, _ []*regentv1.ReplicationChannel) {
			specOf(c, "a").Priority = -1
		}, 1000, false, "", "b"},

		// Each disqualification, alone.
		{"unreachable", then(only("a"), func(c *regentv1.Cluster, _ []*regentv1.ReplicationChannel) {
			nsOf(c, "a").Votes[0].Reachable, nsOf(c, "a").Votes[1].Reachable = false, false
		}), 1000, false, "", "a: unreachable (1 of 3 witness votes reach it)"},
		{"half the votes is not a majority", then(only("a"), func(c *regentv1.Cluster, _ []*regentv1.ReplicationChannel) {
			nsOf(c, "a").Votes = nsOf(c, "a").Votes[:2]
			nsOf(c, "a").Votes[0].Reachable = false
		}), 1000, false, "", "a: unreachable (1 of 2 witness votes reach it)"},
		{"tagged nofailover", then(only("a"), func(c *regentv1.Cluster, _ []*regentv1.ReplicationChannel) {
			specOf(c, "a").Tags = []string{"zone-b", "nofailover"}
		}), 1000, false, "", "a: tagged nofailover"},
		{"wrong system", then(only("a"), func(c *regentv1.Cluster, _ []*regentv1.ReplicationChannel) {
			nsOf(c, "a").WrongSystem = true
		}), 1000, false, "", "a: answers with another cluster's system identifier"},
		{"fenced", then(only("a"), func(c *regentv1.Cluster, _ []*regentv1.ReplicationChannel) {
			nsOf(c, "a").Role = regentv1.NodeRole_NODE_ROLE_FENCED
		}), 1000, false, "", "a: role is fenced, not replica"},
		{"rejoining", then(only("a"), func(c *regentv1.Cluster, _ []*regentv1.ReplicationChannel) {
			nsOf(c, "a").Role = regentv1.NodeRole_NODE_ROLE_REJOINING
		}), 1000, false, "", "a: role is rejoining, not replica"},
		{"another primary", then(only("a"), func(c *regentv1.Cluster, _ []*regentv1.ReplicationChannel) {
			nsOf(c, "a").Role = regentv1.NodeRole_NODE_ROLE_PRIMARY
		}), 1000, false, "", "a: role is primary, not replica"},
		{"never observed", then(only("a"), func(c *regentv1.Cluster, _ []*regentv1.ReplicationChannel) {
			c.NodeStatus = slices.DeleteFunc(c.NodeStatus, func(ns *regentv1.NodeStatus) bool { return ns.Name == "a" })
		}), 1000, false, "", "a: unreachable (0 of 0 witness votes reach it), role is unknown, not replica, 1000B behind the old primary's last LSN, over max_lag_on_failover 100B"},
		{"too many bytes behind", only("a"), 1101, false, "", "a: 101B behind the old primary's last LSN, over max_lag_on_failover 100B"},
		{"exactly max_lag_on_failover behind qualifies", only("a"), 1100, false, "", "a"},
		{"ahead of the old primary's last LSN is no lag", only("a"), 10, false, "", "a"},
		{"its region lags too long", then(only("a"), func(_ *regentv1.Cluster, chs []*regentv1.ReplicationChannel) {
			chs[0].LagSeconds = 61
		}), 1000, false, "", "a: region r2 lags 61s, over failover_lag_threshold 1m0s"},
		{"exactly failover_lag_threshold qualifies", then(only("a"), func(_ *regentv1.Cluster, chs []*regentv1.ReplicationChannel) {
			chs[0].LagSeconds = 60
		}), 1000, false, "", "a"},
		{"no channel for its region: no lag-seconds gate", then(only("d"), func(_ *regentv1.Cluster, chs []*regentv1.ReplicationChannel) {
			chs[1].SecondaryRegion = "r9"
		}), 1000, false, "", "d"},
		{"another cluster's channel is not its region's", only("d"), 1000, false, "", "d"},
		{"lag gates skip to the next", func(_ *regentv1.Cluster, chs []*regentv1.ReplicationChannel) {
			chs[0].LagSeconds = 61
		}, 1000, false, "", "d"},

		// Force.
		{"force skips the byte gate", only("a"), 99999, true, "", "a"},
		{"force skips the seconds gate", then(only("a"), func(_ *regentv1.Cluster, chs []*regentv1.ReplicationChannel) {
			chs[0].LagSeconds = 3600
		}), 1000, true, "", "a"},
		{"force does not skip nofailover", then(only("a"), func(c *regentv1.Cluster, _ []*regentv1.ReplicationChannel) {
			specOf(c, "a").Tags = []string{"nofailover"}
		}), 99999, true, "", "a: tagged nofailover"},
		{"force does not skip reachability", then(only("a"), func(c *regentv1.Cluster, _ []*regentv1.ReplicationChannel) {
			nsOf(c, "a").Votes = nil
		}), 1000, true, "", "a: unreachable (0 of 0 witness votes reach it)"},
		{"force does not skip wrong_system", then(only("a"), func(c *regentv1.Cluster, _ []*regentv1.ReplicationChannel) {
			nsOf(c, "a").WrongSystem = true
		}), 1000, true, "", "a: answers with another cluster's system identifier"},

		// A named target.
		{"to: a qualifying node that is not the best", func(c *regentv1.Cluster, _ []*regentv1.ReplicationChannel) {
			nsOf(c, "a").ReceivedLsn = 1050
		}, 1000, false, "d", "d"},
		{"to: unknown node", nil, 1000, false, "zz", `no failover candidate: node "zz" is not in cluster orders (nodes: p, a, b, c, d)`},
		{"to: the primary", nil, 1000, false, "p", "no failover candidate: p is already the primary of orders; name a standby to promote"},
		{"to: lagging, without force", nil, 1101, false, "b",
			"no failover candidate: b cannot be promoted: 101B behind the old primary's last LSN, over max_lag_on_failover 100B; force skips the lag checks, and the writes it has not received are lost"},
		{"to: lagging, with force", nil, 1101, true, "b", "b"},
		{"to: nofailover, even with force", func(c *regentv1.Cluster, _ []*regentv1.ReplicationChannel) {
			specOf(c, "b").Tags = []string{"nofailover"}
		}, 99999, true, "b", "no failover candidate: b cannot be promoted: tagged nofailover; fix that or name another node"},
		{"to: unreachable and lagging", func(c *regentv1.Cluster, _ []*regentv1.ReplicationChannel) {
			nsOf(c, "b").Votes = nil
		}, 1101, false, "b",
			"no failover candidate: b cannot be promoted: unreachable (0 of 0 witness votes reach it), 101B behind the old primary's last LSN, over max_lag_on_failover 100B; fix that or name another node"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, chs := candState()
			if tt.mutate != nil {
				tt.mutate(c, chs)
			}
			before := proto.Clone(c)
			got, err := ChooseCandidate(c, chs, tt.oldLSN, tt.force, tt.to)
			if !proto.Equal(before, c) {
				t.Fatal("ChooseCandidate modified the cluster")
			}
			if specByName(c, tt.want) != nil {
				if err != nil || got != tt.want {
					t.Fatalf("ChooseCandidate = %q, %v; want %q", got, err, tt.want)
				}
				return
			}
			if !errors.Is(err, ErrNoCandidate) || got != "" {
				t.Fatalf("ChooseCandidate = %q, %v; want an ErrNoCandidate", got, err)
			}
			want := tt.want
			if tt.to == "" {
				// The other nodes were made unreachable to isolate one reason.
				want = "no failover candidate in cluster orders: " + want
			}
			if tt.to == "" && !strings.HasPrefix(err.Error(), want) || tt.to != "" && err.Error() != want {
				t.Fatalf("error:\n got %s\nwant %s", err, want)
			}
		})
	}
}

func TestSameEndpoint(t *testing.T) {
	tests := []struct {
		upstream, host string
		port           uint32
		want           bool
	}{
		{"10.0.0.1:5432", "10.0.0.1", 5432, true},
		{"10.0.0.1:5433", "10.0.0.1", 5432, false},
		{"10.0.0.1", "10.0.0.1", 5432, true},
		{"10.0.0.1", "10.0.0.1", 5433, false},
		{"DB1.example.com:5432", "db1.example.com", 5432, true},
		{"localhost:5432", "127.0.0.1", 5432, true},
		{"127.0.0.1:5432", "localhost", 5432, true},
		{"[::1]:5432", "localhost", 5432, true},
		{"[fe80::1]:5432", "fe80::1", 5432, true},
		{"10.0.0.2:5432", "10.0.0.1", 5432, false},
		{"", "10.0.0.1", 5432, false},
		{"10.0.0.1:x", "10.0.0.1", 5432, false},
	}
	for _, tt := range tests {
		if got := sameEndpoint(tt.upstream, tt.host, tt.port); got != tt.want {
			t.Errorf("sameEndpoint(%q, %q, %d) = %v, want %v", tt.upstream, tt.host, tt.port, got, tt.want)
		}
	}
}

func TestFormatBytes(t *testing.T) {
	for b, want := range map[int64]string{0: "0B", 1023: "1023B", 1024: "1kB", 1536: "1.5kB", 16 << 20: "16MB", 3 << 30: "3GB", 1 << 50: "1024TB"} {
		if got := formatBytes(b); got != want {
			t.Errorf("formatBytes(%d) = %q, want %q", b, got, want)
		}
	}
}

// TestDecideProperty: over generated states, Decide never fails over to the primary, to a
// node a majority of the current witnesses' votes do not reach, to a nofailover or
// wrong-system node, or to a non-replica; it fails over only on the evidence rule, and
// never modifies the state.
func TestDecideProperty(t *testing.T) {
	failovers, downs := 0, 0
	for seed := uint64(1); seed <= 3000; seed++ {
		r := rand.New(rand.NewPCG(seed, 77))
		st := genDecideState(r)
		now := t0.Add(time.Duration(15000+r.IntN(10000)) * time.Millisecond)
		before := proto.Clone(st)
		d := Decide(st, "orders", now)
		if !proto.Equal(before, st) {
			t.Fatalf("seed %d: Decide modified the state", seed)
		}
		if d.Down {
			downs++
		}
		if !d.Failover {
			if d.Candidate != "" || (!d.Down && (d.Refusal != "" || d.Reason != "")) {
				t.Fatalf("seed %d: no failover but %+v", seed, d)
			}
			continue
		}
		failovers++
		c := st.Clusters[0]
		members := map[string]string{}
		for _, m := range st.Members {
			members[m.Name] = m.Region
		}
		if !d.Down || d.Refusal != "" || d.Reason == "" || c.Paused {
			t.Fatalf("seed %d: failover with %+v (paused %v)", seed, d, c.Paused)
		}
		// The evidence: a majority of members, from two regions, down for down_after.
		down, regions := 0, map[string]bool{}
		for _, v := range statusByName(c, c.Primary).GetVotes() {
			if r, ok := members[v.Witness]; ok && !v.Reachable && v.Since != nil && !v.Since.AsTime().After(now.Add(-1500*time.Millisecond)) {
				down++
				regions[r] = true
			}
		}
		if 2*down <= len(members) || len(regions) < 2 {
			t.Fatalf("seed %d: failover on %d of %d witnesses from %d regions", seed, down, len(members), len(regions))
		}
		cand := d.Candidate
		ns := statusByName(c, cand)
		n := specByName(c, cand)
		if cand == c.Primary || n == nil || ns == nil {
			t.Fatalf("seed %d: candidate %q (primary %q)", seed, cand, c.Primary)
		}
		up, total := 0, 0
		for _, v := range ns.Votes {
			if _, ok := members[v.Witness]; ok {
				total++
				if v.Reachable {
					up++
				}
			}
		}
		if 2*up <= total {
			t.Fatalf("seed %d: candidate %s reached by %d of %d current witnesses' votes", seed, cand, up, total)
		}
		if slices.Contains(n.Tags, TagNoFailover) || ns.WrongSystem || ns.Role != regentv1.NodeRole_NODE_ROLE_REPLICA {
			t.Fatalf("seed %d: candidate %s: tags %v wrong_system %v role %v", seed, cand, n.Tags, ns.WrongSystem, ns.Role)
		}
		if d.EstimatedLossBytes < 0 || d.EstimatedLossBytes > spec.WithDefaults(c.Policy).MaxLagOnFailoverBytes {
			t.Fatalf("seed %d: estimated loss %d", seed, d.EstimatedLossBytes)
		}
	}
	t.Logf("%d failovers, %d refused downs", failovers, downs-failovers)
	if failovers < 100 || downs-failovers < 100 {
		t.Fatalf("generator gave %d failovers and %d refused downs; want both ≥ 100", failovers, downs-failovers)
	}
}

// genDecideState generates a cluster "orders" of 2-5 nodes in up to 3 regions, 2-5 witnesses
// (and votes from a former one), random votes, roles, tags, LSNs, streaming standbys, pauses
// and failover events.
func genDecideState(r *rand.Rand) *regentv1.State {
	regions := []string{"us", "eu", "ap"}
	pick := func(xs []string) string { return xs[r.IntN(len(xs))] }
	st := &regentv1.State{}
	witnesses := []string{"w1", "w2", "w3", "w4", "w5", "w6"}
	for i := range r.IntN(4) + 2 {
		st.Members = append(st.Members, &regentv1.Member{Name: witnesses[i], Region: pick(regions)})
	}
	c := &regentv1.Cluster{Name: "orders", Primary: "n0", Paused: r.IntN(6) == 0}
	if r.IntN(2) == 0 {
		c.Policy = &regentv1.Policy{MaxLagOnFailoverBytes: int64(r.IntN(3000)), FailoverLagThresholdMs: int64(r.IntN(4)) * 10000}
	}
	var oldLSN uint64 = 10000
	for i := range r.IntN(4) + 2 {
		name := fmt.Sprintf("n%d", i)
		n := &regentv1.NodeSpec{Name: name, Region: pick(regions), Host: fmt.Sprintf("10.0.0.%d", i), Port: 5432, Priority: int32(r.IntN(3))}
		if r.IntN(5) == 0 {
			n.Tags = []string{TagNoFailover}
		}
		c.Nodes = append(c.Nodes, n)
		ns := &regentv1.NodeStatus{Name: name, Role: regentv1.NodeRole(r.IntN(5)), WrongSystem: r.IntN(8) == 0,
			ReceivedLsn: oldLSN - uint64(r.IntN(4000)), ReplayLsn: oldLSN - uint64(r.IntN(5000))}
		if r.IntN(3) > 0 {
			ns.Role = regentv1.NodeRole_NODE_ROLE_REPLICA
		}
		if i == 0 {
			ns.Role, ns.CurrentLsn = regentv1.NodeRole_NODE_ROLE_PRIMARY, oldLSN
		} else if r.IntN(12) == 0 {
			ns.WalReceiverStatus, ns.Upstream = "streaming", "10.0.0.0:5432"
		}
		reachable := i != 0 || r.IntN(5) == 0
		// Votes from the members and now and then from a former witness (w6).
		for _, w := range witnesses[:min(len(st.Members)+r.IntN(2), len(witnesses)-1)] {
			if r.IntN(8) == 0 {
				continue
			}
			if r.IntN(8) == 0 {
				w = witnesses[len(witnesses)-1]
			}
			if slices.ContainsFunc(ns.Votes, func(v *regentv1.Vote) bool { return v.Witness == w }) {
				continue
			}
			v := &regentv1.Vote{Witness: w, Reachable: reachable != (r.IntN(8) == 0)}
			if r.IntN(20) > 0 {
				v.Since = ts(t0.Add(time.Duration(r.IntN(20000)) * time.Millisecond))
			}
			ns.Votes = append(ns.Votes, v)
		}
		c.NodeStatus = append(c.NodeStatus, ns)
	}
	st.Clusters = []*regentv1.Cluster{c}
	for _, rg := range regions {
		if r.IntN(2) == 0 {
			st.Channels = append(st.Channels, &regentv1.ReplicationChannel{Cluster: "orders", PrimaryRegion: c.Nodes[0].Region,
				SecondaryRegion: rg, LagSeconds: int64(r.IntN(600))})
		}
	}
	if r.IntN(6) == 0 {
		ev := &regentv1.FailoverEvent{Id: 1, Cluster: "orders", Step: regentv1.FailoverStep(r.IntN(7) + 1)}
		if ev.Step == regentv1.FailoverStep_FAILOVER_STEP_COMPLETED {
			ev.CompletedAt = ts(t0.Add(-time.Duration(r.IntN(600)) * time.Second))
		}
		st.FailoverEvents = append(st.FailoverEvents, ev)
	}
	return st
}
