package agent_test

import (
	"context"
	"io"
	"maps"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/regentdb/regent/internal/benchkeeper"
	"github.com/regentdb/regent/internal/freeport"
	"github.com/regentdb/regent/internal/witnesstest"
	"github.com/regentdb/regent/keeper"
	"github.com/regentdb/regent/pgtest"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// keeperView is witness i's Members answer about the keepers.
func keeperView(t *testing.T, c *witnesstest.Cluster, i int) []*regentv1.KeeperMember {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := c.Client(i).Members(ctx, &regentv1.MembersRequest{})
	if err != nil {
		t.Fatalf("Members on witness %d: %v", i, err)
	}
	return resp.GetKeepers()
}

// everyWitnessSeesKeeper reports whether every witness lists exactly one keeper, pg-us of
// orders, in gossip state want, and (when k is given) with k's addresses.
func everyWitnessSeesKeeper(t *testing.T, c *witnesstest.Cluster, want string, k *keeper.Keeper, gossipAddr string) bool {
	for i := range c.Agents {
		ks := keeperView(t, c, i)
		if len(ks) != 1 || ks[0].GetCluster() != "orders" || ks[0].GetNode() != "pg-us" || ks[0].GetGossip() != want ||
			ks[0].GetGossipAddr() != gossipAddr || !ks[0].GetSince().IsValid() {
			return false
		}
		if k != nil && (ks[0].GetKeeperAddr() != k.GRPCAddr() || ks[0].GetHttpAddr() != k.HTTPAddr()) {
			return false
		}
	}
	return true
}

// raftUntouched waits for a reconcile round on the leader that started after now, then checks
// that the Raft configuration is still exactly the three witnesses (voters) and that Members
// lists exactly them.
func raftUntouched(t *testing.T, c *witnesstest.Cluster, want map[string]bool) {
	t.Helper()
	leader := c.WaitLeader(wait) // it may have changed on a loaded machine
	from := c.Agents[leader].Reconciles()
	witnesstest.Eventually(t, wait, "two reconcile rounds on the leader", func() bool { return c.Agents[leader].Reconciles() >= from+2 })
	if got := voters(t, c, leader); !maps.Equal(got, want) {
		t.Fatalf("raft configuration = %v, want the three witnesses %v", got, want)
	}
	for i := range c.Agents {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := c.Client(i).Members(ctx, &regentv1.MembersRequest{})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetMembers()) != 3 {
			t.Fatalf("witness %d lists %d members, want the 3 witnesses: %v", i, len(resp.GetMembers()), resp.GetMembers())
		}
		for _, m := range resp.GetMembers() {
			if !want[m.GetId()] || m.GetRaftRole() == "none" {
				t.Errorf("witness %d lists member %v", i, m)
			}
		}
	}
}

// A keeper with gossip_addr joins the witnesses' gossip: every witness lists it alive in
// Members with its addresses, while the Raft configuration stays the three witnesses; killed
// (no goodbye) it turns dead in every witness's view and Raft is untouched; restarted it is alive
// again, and shut down it is listed as left. Before all that, a keeper whose join addresses
// answer nothing still starts and holds its lease: gossip is not on the lease's path.
func TestKeeperJoinsWitnessGossip(t *testing.T) {
	b := pgtest.Start(t, pgtest.Options{})
	primary := b.Servers()[0]
	c := witnesstest.Start(t, 3, witnesstest.Options{})
	leader := c.WaitLeader(wait)
	c.WaitReady(wait)
	c.WaitMembers(wait)
	witnesses := voters(t, c, leader)
	var grpcAddrs, gossipAddrs []string
	for _, wc := range c.Configs {
		grpcAddrs = append(grpcAddrs, wc.GRPCAddr)
		gossipAddrs = append(gossipAddrs, wc.GossipAddr)
	}
	nobody, err := freeport.Addr()
	if err != nil {
		t.Fatal(err)
	}
	stateDir := filepath.Join(t.TempDir(), "keeper-pg-us")
	config := func(join []string) keeper.Config {
		cfg, err := benchkeeper.Config(b, primary, benchkeeper.Options{Cluster: "orders", Node: "pg-us", Witnesses: grpcAddrs,
			StateDir: stateDir, FenceMargin: 800 * time.Millisecond, GossipJoin: join})
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	start := func(cfg keeper.Config) *keeper.Keeper {
		k, err := keeper.Start(cfg, keeperTestLogger(t))
		if err != nil {
			t.Fatalf("start the keeper of pg-us: %v", err)
		}
		t.Cleanup(func() { _ = k.Shutdown() })
		witnesstest.Eventually(t, wait, "the keeper holding the lease", func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			return k.Status(ctx, false).HoldsLease
		})
		return k
	}
	applyRetrying(t, witnesstest.Context(t, wait), c, leader, &regentv1.ClusterSpec{
		Name: "orders", Primary: "pg-us", Policy: keeperRigPolicy(),
		Nodes: []*regentv1.NodeSpec{{Name: "pg-us", Region: "us-east", Host: primary.Host, Port: uint32(primary.Port)}},
	})

	// Join addresses nobody answers: the keeper starts, holds the lease, and no witness lists it.
	k := start(config([]string{nobody}))
	for i := range c.Agents {
		if ks := keeperView(t, c, i); len(ks) != 0 {
			t.Fatalf("witness %d lists keepers %v before any joined", i, ks)
		}
	}
	if err := k.Shutdown(); err != nil {
		t.Fatal(err)
	}

	cfg := config(gossipAddrs)
	k = start(cfg)
	witnesstest.Eventually(t, wait, "every witness listing the keeper alive", func() bool {
		return everyWitnessSeesKeeper(t, c, "alive", k, cfg.GossipAddr)
	})
	raftUntouched(t, c, witnesses)
	metrics := func() string {
		resp, err := http.Get("http://" + c.Configs[0].HTTPAddr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return string(body)
	}
	if st, err := c.Client(1).GetState(witnesstest.Context(t, wait), &regentv1.GetStateRequest{}); err != nil {
		t.Fatal(err)
	} else if ks := st.GetKeepers(); len(ks) != 1 || ks[0].GetNode() != "pg-us" || ks[0].GetGossip() != "alive" {
		t.Errorf("GetState keepers = %v, want pg-us alive (regent status shows it)", ks)
	}
	if m := metrics(); !strings.Contains(m, `regent_keepers{state="alive"} 1`) || !strings.Contains(m, `regent_members{state="alive"} 3`) {
		t.Errorf("/metrics does not count one alive keeper beside three witnesses:\n%s", m)
	}

	k.Kill()
	witnesstest.Eventually(t, time.Minute, "every witness listing the killed keeper dead", func() bool {
		return everyWitnessSeesKeeper(t, c, "dead", nil, cfg.GossipAddr)
	})
	raftUntouched(t, c, witnesses)

	k = start(cfg)
	witnesstest.Eventually(t, wait, "every witness listing the restarted keeper alive", func() bool {
		return everyWitnessSeesKeeper(t, c, "alive", k, cfg.GossipAddr)
	})
	if err := k.Shutdown(); err != nil {
		t.Fatal(err)
	}
	witnesstest.Eventually(t, wait, "every witness listing the stopped keeper as left", func() bool {
		return everyWitnessSeesKeeper(t, c, "left", nil, cfg.GossipAddr)
	})
	raftUntouched(t, c, witnesses)
}
