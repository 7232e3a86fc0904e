package coordinator

import (
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/regentdb/regent/fsm"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
	"github.com/regentdb/regent/spec"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// at returns t0 plus ms milliseconds.
func at(ms int64) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

func ts(t time.Time) *timestamppb.Timestamp { return timestamppb.New(t) }

const sysID = 7000001

// primaryObs is a witness's view of a healthy primary.
func primaryObs(cluster, node string, t time.Time, lsn uint64) *regentv1.Observation {
	return &regentv1.Observation{Cluster: cluster, Node: node, At: ts(t), Reachable: true, CurrentLsn: lsn, Timeline: 1,
		SystemIdentifier: sysID}
}

// standbyObs is a witness's view of a healthy streaming standby.
func standbyObs(cluster, node string, t time.Time, replay uint64) *regentv1.Observation {
	return &regentv1.Observation{Cluster: cluster, Node: node, At: ts(t), Reachable: true, InRecovery: true,
		ReceivedLsn: replay, ReplayLsn: replay, Timeline: 1, SystemIdentifier: sysID, WalReceiverStatus: "streaming",
		Upstream: "10.0.0.1:5432"}
}

// downObs is a witness's failed probe.
func downObs(cluster, node string, t time.Time, class string) *regentv1.Observation {
	return &regentv1.Observation{Cluster: cluster, Node: node, At: ts(t), ErrorClass: class, Error: class}
}

// withHB sets the newest heartbeat the observation saw.
func withHB(o *regentv1.Observation, hb time.Time) *regentv1.Observation {
	o.HeartbeatAt = ts(hb)
	return o
}

// report is one witness's observations.
type report struct {
	witness string
	obs     []*regentv1.Observation
}

func feed(a *Aggregator, reports ...report) {
	for _, r := range reports {
		a.Add(r.witness, r.obs)
	}
}

// ordersState returns a state with cluster "orders": n1 (us-east, primary), n2 and n3
// (eu-west), n4 (us-east) and n5 (ap-south), with default policy and unknown node status.
func ordersState() *regentv1.State {
	nodes := []*regentv1.NodeSpec{
		{Name: "n1", Region: "us-east", Host: "10.0.0.1", Port: 5432},
		{Name: "n2", Region: "eu-west", Host: "10.0.0.2", Port: 5432},
		{Name: "n3", Region: "eu-west", Host: "10.0.0.3", Port: 5432},
		{Name: "n4", Region: "us-east", Host: "10.0.0.4", Port: 5432},
		{Name: "n5", Region: "ap-south", Host: "10.0.0.5", Port: 5432},
	}
	c := &regentv1.Cluster{Name: "orders", Primary: "n1", Nodes: nodes, Policy: spec.WithDefaults(nil), SpecVersion: 1}
	for _, n := range nodes {
		c.NodeStatus = append(c.NodeStatus, &regentv1.NodeStatus{Name: n.Name})
	}
	return &regentv1.State{Clusters: []*regentv1.Cluster{c}, NextChannelId: 1}
}

// statusOf returns the named node's status in st (for tests to set committed facts).
func statusOf(st *regentv1.State, cluster, name string) *regentv1.NodeStatus {
	for _, c := range st.Clusters {
		if c.Name == cluster {
			for _, n := range c.NodeStatus {
				if n.Name == name {
					return n
				}
			}
		}
	}
	panic("no node " + cluster + "/" + name)
}

// chanOf returns the channel with that key in chs, or nil.
func chanOf(chs []*regentv1.ReplicationChannel, cluster, primary, secondary string) *regentv1.ReplicationChannel {
	for _, ch := range chs {
		if ch.Cluster == cluster && ch.PrimaryRegion == primary && ch.SecondaryRegion == secondary {
			return ch
		}
	}
	return nil
}

// cluster is a commit target: an FSM fed through the raft interface, as the leader does.
type cluster struct {
	t   testing.TB
	f   *fsm.FSM
	idx uint64
}

func newCluster(t testing.TB, specs ...*regentv1.ClusterSpec) *cluster {
	c := &cluster{t: t, f: fsm.New()}
	for _, s := range specs {
		c.commit(regentv1.CommandType_COMMAND_TYPE_APPLY_CLUSTER, &regentv1.ApplyClusterCommand{Spec: s}, t0)
	}
	return c
}

// commit applies a command, failing the test if it is rejected.
func (c *cluster) commit(typ regentv1.CommandType, payload proto.Message, now time.Time) {
	c.t.Helper()
	data, err := fsm.Encode(typ, payload, now, "regent/w1")
	if err != nil {
		c.t.Fatal(err)
	}
	c.idx++
	res := c.f.Apply(&raft.Log{Index: c.idx, Type: raft.LogCommand, Data: data}).(*fsm.Result)
	if res.Err != nil {
		c.t.Fatalf("%s rejected: %v", typ, res.Err)
	}
}

func (c *cluster) state() *regentv1.State {
	st, _ := c.f.State()
	return st
}

// round runs one leader interval: Changes then Channels, each committed when non-nil. It
// returns how many entries it committed.
func (c *cluster) round(a *Aggregator, now time.Time) (changes, channels int) {
	if cmd := a.Changes(c.state(), now); cmd != nil {
		c.commit(regentv1.CommandType_COMMAND_TYPE_RECORD_OBSERVATIONS, cmd, now)
		changes++
	}
	if cmd := a.Channels(c.state(), now); cmd != nil {
		c.commit(regentv1.CommandType_COMMAND_TYPE_UPDATE_CHANNELS, cmd, now)
		channels++
	}
	return changes, channels
}

func ordersSpec() *regentv1.ClusterSpec {
	st := ordersState()
	return &regentv1.ClusterSpec{Name: "orders", Primary: "n1", Nodes: st.Clusters[0].Nodes}
}
