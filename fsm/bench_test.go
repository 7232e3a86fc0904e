package fsm

import (
	"fmt"
	"io"
	"testing"

	"github.com/hashicorp/raft"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

const benchClusters = 1000

func benchFSM(b *testing.B) *FSM {
	f := New()
	for i := range benchClusters {
		mustApply(b, f, applyCmd(testSpec(fmt.Sprintf("cluster-%04d", i), "n1", "n1", "n2", "n3")))
	}
	return f
}

// BenchmarkApplyCluster applies spec updates (decode, validate, update, audit) to an FSM
// holding 1,000 clusters.
func BenchmarkApplyCluster(b *testing.B) {
	f := benchFSM(b)
	entries := make([][]byte, benchClusters)
	for i := range entries {
		entries[i] = mustEncode(b, applyCmd(testSpec(fmt.Sprintf("cluster-%04d", i), "n1", "n1", "n2", "n3")))
	}
	idx := f.AppliedIndex()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		idx++
		res := f.Apply(&raft.Log{Index: idx, Type: raft.LogCommand, Data: entries[i%benchClusters]}).(*Result)
		if res.Err != nil {
			b.Fatal(res.Err)
		}
	}
}

type discardSink struct{ n int64 }

func (d *discardSink) Write(p []byte) (int, error) { d.n += int64(len(p)); return len(p), nil }
func (d *discardSink) Close() error                { return nil }
func (d *discardSink) Cancel() error               { return nil }
func (d *discardSink) ID() string                  { return "discard" }

var _ io.Writer = (*discardSink)(nil)

// BenchmarkSnapshot takes and persists a snapshot of 1,000 clusters (and their 1,000 audit
// records).
func BenchmarkSnapshot(b *testing.B) {
	f := benchFSM(b)
	b.ReportAllocs()
	var size int64
	for b.Loop() {
		snap, err := f.Snapshot()
		if err != nil {
			b.Fatal(err)
		}
		sink := &discardSink{}
		if err := snap.Persist(sink); err != nil {
			b.Fatal(err)
		}
		snap.Release()
		size = sink.n
	}
	b.SetBytes(size)
}

// BenchmarkRestore reads back a snapshot of 1,000 clusters.
func BenchmarkRestore(b *testing.B) {
	data := snapshotBytes(b, benchFSM(b))
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if err := restoreBytes(New(), data); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkApplyChannelBatch applies the leader's per-interval UPDATE_CHANNELS entry for an
// FSM of 1,000 clusters: half of them busy, so 1,000 channels and 1,500 node LSNs change.
func BenchmarkApplyChannelBatch(b *testing.B) {
	f := benchFSM(b)
	batch := func(lsn uint64) []byte {
		cmd := &regentv1.UpdateChannelsCommand{}
		for i := 0; i < benchClusters; i += 2 {
			name := fmt.Sprintf("cluster-%04d", i)
			cmd.Clusters = append(cmd.Clusters, name)
			for _, r := range []string{"r1", "r2"} {
				cmd.Channels = append(cmd.Channels, &regentv1.ReplicationChannel{Cluster: name, PrimaryRegion: "r0", SecondaryRegion: r,
					Status: regentv1.ChannelStatus_CHANNEL_STATUS_ACTIVE, PrimaryLsn: lsn, ApplyLsn: lsn - 100, LagBytes: 100})
			}
			for j, n := range []string{"n1", "n2", "n3"} {
				st := &regentv1.NodeStatus{Name: n, Role: regentv1.NodeRole_NODE_ROLE_REPLICA, Timeline: 1, ReplayLsn: lsn - 100}
				if j == 0 {
					st.Role, st.CurrentLsn, st.ReplayLsn = regentv1.NodeRole_NODE_ROLE_PRIMARY, lsn, 0
				}
				cmd.Nodes = append(cmd.Nodes, &regentv1.NodeStatusUpdate{Cluster: name, Status: st})
			}
		}
		return mustEncode(b, channelsCmd(cmd))
	}
	entries := [][]byte{batch(1 << 30), batch(2 << 30)}
	b.SetBytes(int64(len(entries[0])))
	idx := f.AppliedIndex()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		idx++
		res := f.Apply(&raft.Log{Index: idx, Type: raft.LogCommand, Data: entries[i%2]}).(*Result)
		if res.Err != nil {
			b.Fatal(res.Err)
		}
	}
}
