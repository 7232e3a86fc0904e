package agent

import (
	"maps"
	"testing"

	"github.com/regentdb/regent/gossip"
)

// keeperPeer is a keeper as a witness's gossip records it; with a Raft identity and address
// forged in, to show that the role alone keeps it out.
func keeperPeer(node string) gossip.Peer {
	return gossip.Peer{Name: gossip.KeeperName("orders", node), State: "alive", Meta: gossip.Meta{
		Role: gossip.RoleKeeper, Cluster: "orders", Node: node, ID: "id-" + node, RaftAddr: "raft-" + node,
		GRPCAddr: "grpc-" + node,
	}}
}

func witnessPeer(name string, hasState bool) gossip.Peer {
	return gossip.Peer{Name: name, State: "alive", Meta: gossip.Meta{ID: "id-" + name, RaftAddr: "raft-" + name, HasState: hasState}}
}

func TestBootstrapAndReconcileIgnoreKeepers(t *testing.T) {
	peers := []gossip.Peer{keeperPeer("pg-us"), witnessPeer("w2", false), keeperPeer("pg-eu"), witnessPeer("w1", false),
		{Name: "w3", State: "dead", Meta: gossip.Meta{ID: "id-w3", RaftAddr: "raft-w3"}},
		{Name: "keeper-without-role-or-id", State: "alive", Meta: gossip.Meta{GRPCAddr: "x"}}}

	voters, exists := bootstrapVoters(peers)
	want := map[string]string{"id-w1": "raft-w1", "id-w2": "raft-w2"}
	if exists || !maps.Equal(voters, want) {
		t.Errorf("bootstrap voters = %v (exists %v), want %v: keepers, dead witnesses and members without a Raft identity never count", voters, exists, want)
	}

	got := raftCandidates(peers)
	if len(got) != 2 || got[0].Name != "w1" || got[1].Name != "w2" {
		t.Errorf("raft candidates = %+v, want w1, w2", got)
	}

	// A keeper can never make a fresh witness believe a cluster exists, either.
	k := keeperPeer("pg-ap")
	k.Meta.HasState = true
	if _, exists := bootstrapVoters([]gossip.Peer{witnessPeer("w1", false), k}); exists {
		t.Error("a keeper advertising has_state stopped a bootstrap")
	}
	if _, exists := bootstrapVoters([]gossip.Peer{witnessPeer("w1", false), witnessPeer("w2", true)}); !exists {
		t.Error("a witness with Raft state did not stop a bootstrap")
	}
}
