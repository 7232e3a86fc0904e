package agent_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/regentdb/regent/cli"
	"github.com/regentdb/regent/fsm"
	"github.com/regentdb/regent/internal/witnesstest"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
	"github.com/regentdb/regent/spec"
)

const wait = 30 * time.Second

func ordersSpec(name string) *regentv1.ClusterSpec {
	return &regentv1.ClusterSpec{
		Name:    name,
		Primary: "pg-us",
		Nodes: []*regentv1.NodeSpec{
			{Name: "pg-us", Region: "us-east", Host: "127.0.0.1", Port: 5432},
			{Name: "pg-eu", Region: "eu-west", Host: "127.0.0.1", Port: 5433},
			{Name: "pg-ap", Region: "ap-south", Host: "127.0.0.1", Port: 5434},
		},
	}
}

// voters returns the Raft configuration as the leader sees it: id → voter.
func voters(t *testing.T, c *witnesstest.Cluster, leader int) map[string]bool {
	t.Helper()
	servers, err := c.Agents[leader].Store().Servers()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, s := range servers {
		out[s.ID] = s.Voter
	}
	return out
}

// applyRetrying applies a spec through witness i, retrying while the answer is Unavailable (an
// election under way), as a client is expected to.
func applyRetrying(t *testing.T, ctx context.Context, c *witnesstest.Cluster, i int, sp *regentv1.ClusterSpec) {
	t.Helper()
	for {
		_, err := c.Client(i).ApplyCluster(ctx, &regentv1.ApplyClusterRequest{Spec: sp})
		if err == nil {
			return
		}
		if status.Code(err) != codes.Unavailable || ctx.Err() != nil {
			t.Fatalf("apply %s: %v", sp.Name, err)
		}
	}
}

func hasCluster(t *testing.T, c *witnesstest.Cluster, i int, name string) bool {
	_, ok := c.Agents[i].FSM().Cluster(name)
	return ok
}

func TestThreeWitnessesBootstrapFromGossip(t *testing.T) {
	c := witnesstest.Start(t, 3, witnesstest.Options{})
	leader := c.WaitLeader(wait)
	c.WaitReady(wait)
	witnesstest.Eventually(t, wait, "three voters and three member records", func() bool {
		v := voters(t, c, leader)
		n := 0
		for _, isVoter := range v {
			if isVoter {
				n++
			}
		}
		return n == 3 && len(c.Agents[leader].FSM().Members()) == 3
	})
	ctx := witnesstest.Context(t, wait)
	resp, err := c.Client(c.Follower(leader)).Members(ctx, &regentv1.MembersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Leader != c.Configs[leader].NodeName {
		t.Errorf("Members.leader = %q, want %q", resp.Leader, c.Configs[leader].NodeName)
	}
	roles := map[string]string{}
	for _, m := range resp.Members {
		roles[m.Name] = m.RaftRole
		if !m.Voter || m.Gossip != "alive" || m.Region == "" || m.GrpcAddr == "" {
			t.Errorf("member %+v: want an alive voter with region and address", m)
		}
	}
	for i, cfg := range c.Configs {
		want := "follower"
		if i == leader {
			want = "leader"
		}
		if roles[cfg.NodeName] != want {
			t.Errorf("%s raft_role = %q, want %q (all: %v)", cfg.NodeName, roles[cfg.NodeName], want, roles)
		}
	}
}

func TestFiveWitnessesAndSixthIsNonvoter(t *testing.T) {
	if testing.Short() {
		t.Skip("six witnesses: not in -short")
	}
	c := witnesstest.Start(t, 5, witnesstest.Options{})
	leader := c.WaitLeader(wait)
	c.WaitReady(wait)
	c.WaitMembers(wait)
	sixth := c.Add()
	witnesstest.Eventually(t, wait, "sixth witness added as a non-voter", func() bool {
		v, ok := voters(t, c, leader)[c.Agents[sixth].ID()]
		return ok && !v
	})
	v := voters(t, c, leader)
	n := 0
	for _, isVoter := range v {
		if isVoter {
			n++
		}
	}
	if n != 5 || len(v) != 6 {
		t.Fatalf("configuration %v: want 5 voters of 6 servers", v)
	}
	// Removing a voter makes room: the non-voter is promoted.
	victim := c.Follower(leader)
	ctx := witnesstest.Context(t, wait)
	if _, err := c.Client(leader).RemoveMember(ctx, &regentv1.RemoveMemberRequest{Name: c.Configs[victim].NodeName}); err != nil {
		t.Fatal(err)
	}
	c.StopNode(victim)
	witnesstest.Eventually(t, wait, "non-voter promoted after a voter was removed", func() bool {
		return voters(t, c, leader)[c.Agents[sixth].ID()]
	})
}

func TestLeaderKillElectsNewLeaderAndWritesContinue(t *testing.T) {
	c := witnesstest.Start(t, 3, witnesstest.Options{})
	old := c.WaitLeader(wait)
	c.WaitReady(wait)
	ctx := witnesstest.Context(t, wait)
	applyRetrying(t, ctx, c, old, ordersSpec("before"))
	c.StopNode(old)
	leader := c.WaitLeader(wait)
	if leader == old {
		t.Fatal("stopped witness still leader")
	}
	// Writes sent to either survivor succeed (one of them forwards).
	for _, i := range c.Running() {
		name := fmt.Sprintf("after-%d", i)
		witnesstest.Eventually(t, wait, "write after leader loss", func() bool {
			_, err := c.Client(i).ApplyCluster(ctx, &regentv1.ApplyClusterRequest{Spec: ordersSpec(name)})
			return err == nil
		})
	}
	for _, i := range c.Running() {
		witnesstest.Eventually(t, wait, "all clusters on every survivor", func() bool {
			return hasCluster(t, c, i, "before") && hasCluster(t, c, i, "after-0") || hasCluster(t, c, i, "after-1") && hasCluster(t, c, i, "after-2")
		})
	}
}

func TestSpecAppliedOnFollowerIsReadableEverywhere(t *testing.T) {
	c := witnesstest.Start(t, 3, witnesstest.Options{})
	leader := c.WaitLeader(wait)
	c.WaitReady(wait)
	f := c.Follower(leader)
	ctx := witnesstest.Context(t, wait)
	resp, err := c.Client(f).ApplyCluster(ctx, &regentv1.ApplyClusterRequest{Spec: ordersSpec("orders")})
	if err != nil {
		t.Fatalf("apply on follower: %v", err)
	}
	if !resp.Created || resp.Cluster.GetPrimary() != "pg-us" || resp.Index == 0 {
		t.Errorf("apply response %+v", resp)
	}
	// A linearizable read on any node sees it at once.
	for i := range c.Agents {
		st, err := c.Client(i).GetState(ctx, &regentv1.GetStateRequest{Read: &regentv1.ReadOptions{Consistent: true}})
		if err != nil {
			t.Fatalf("consistent read on %d: %v", i, err)
		}
		if len(st.Clusters) != 1 || st.Clusters[0].Name != "orders" || st.Index < resp.Index {
			t.Errorf("consistent read on w%d: clusters %v index %d (apply index %d)", i+1, st.Clusters, st.Index, resp.Index)
		}
	}
	// Local reads converge on every node.
	for i := range c.Agents {
		witnesstest.Eventually(t, wait, "cluster visible locally", func() bool {
			lc, err := c.Client(i).ListClusters(ctx, &regentv1.ListClustersRequest{})
			return err == nil && len(lc.Clusters) == 1 && lc.Clusters[0].GetSpecVersion() == 1 && len(lc.Clusters[0].Nodes) == 3
		})
	}
	// The CLI's JSON status carries the fields scripts rely on.
	var out, errOut bytes.Buffer
	if code := cli.Run(ctx, []string{"--addr", c.Configs[f].GRPCAddr, "status", "-o", "json"}, &out, &errOut); code != 0 {
		t.Fatalf("regent status exit %d: %s", code, errOut.String())
	}
	var status struct {
		Leader  string `json:"leader"`
		Index   string `json:"index"`
		Members []struct {
			Name     string `json:"name"`
			Region   string `json:"region"`
			RaftRole string `json:"raft_role"`
			Voter    bool   `json:"voter"`
		} `json:"members"`
		Clusters []struct {
			Name    string            `json:"name"`
			Primary string            `json:"primary"`
			Nodes   []json.RawMessage `json:"nodes"`
		} `json:"clusters"`
		Channels       []json.RawMessage `json:"channels"`
		FailoverEvents []json.RawMessage `json:"failover_events"`
	}
	if err := json.Unmarshal(out.Bytes(), &status); err != nil {
		t.Fatalf("status -o json: %v\n%s", err, out.String())
	}
	if status.Leader != c.Configs[leader].NodeName || len(status.Members) != 3 || len(status.Clusters) != 1 ||
		status.Clusters[0].Primary != "pg-us" || len(status.Clusters[0].Nodes) != 3 || status.Index == "" {
		t.Errorf("status -o json = %s", out.String())
	}
	for _, key := range []string{`"channels"`, `"failover_events"`} {
		if !strings.Contains(out.String(), key) {
			t.Errorf("status -o json lacks %s", key)
		}
	}
}

func TestInvalidSpecIsRejectedAndChangesNothing(t *testing.T) {
	c := witnesstest.Start(t, 3, witnesstest.Options{})
	leader := c.WaitLeader(wait)
	c.WaitReady(wait)
	c.WaitMembers(wait)
	ctx := witnesstest.Context(t, wait)
	before := c.Agents[leader].FSM().AppliedIndex()
	bad := ordersSpec("orders")
	bad.Nodes[1].Port = 70000
	bad.Primary = "pg-nowhere"
	_, err := c.Client(c.Follower(leader)).ApplyCluster(ctx, &regentv1.ApplyClusterRequest{Spec: bad})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("invalid spec: got %v, want InvalidArgument", err)
	}
	for _, want := range []string{"nodes[1].port", "primary"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	if got := c.Agents[leader].FSM().AppliedIndex(); got != before {
		t.Errorf("applied index moved from %d to %d on a rejected spec", before, got)
	}
	if _, ok := c.Agents[leader].FSM().Cluster("orders"); ok {
		t.Error("rejected cluster exists")
	}
	_, err = c.Client(leader).DeleteCluster(ctx, &regentv1.DeleteClusterRequest{Name: "ghost"})
	if status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), "ghost") {
		t.Errorf("delete of a missing cluster: %v", err)
	}
}

func TestFullRestartKeepsStateWithoutRebootstrap(t *testing.T) {
	c := witnesstest.Start(t, 3, witnesstest.Options{})
	leader := c.WaitLeader(wait)
	c.WaitReady(wait)
	ctx := witnesstest.Context(t, 2*wait)
	applyRetrying(t, ctx, c, leader, ordersSpec("orders"))
	c.WaitReady(wait)
	ids := map[int]string{}
	term := c.Agents[leader].Store().Term()
	for i := range c.Agents {
		ids[i] = c.Agents[i].ID()
		c.StopNode(i)
	}
	for i := range c.Agents {
		c.StartNode(i)
		if !c.Agents[i].Store().HasState() {
			t.Fatalf("w%d has no raft state after restart", i+1)
		}
		if c.Agents[i].ID() != ids[i] {
			t.Errorf("w%d identity changed across restart", i+1)
		}
	}
	leader = c.WaitLeader(wait)
	c.WaitReady(wait)
	if got := c.Agents[leader].Store().Term(); got <= term {
		t.Errorf("term %d after restart is not above %d", got, term)
	}
	if v := voters(t, c, leader); len(v) != 3 {
		t.Errorf("configuration after restart %v, want the same three servers", v)
	}
	for i := range c.Agents {
		witnesstest.Eventually(t, wait, "state restored", func() bool {
			cl, ok := c.Agents[i].FSM().Cluster("orders")
			return ok && cl.GetSpecVersion() == 1
		})
	}
	// And it still takes writes.
	resp, err := c.Client(leader).ApplyCluster(ctx, &regentv1.ApplyClusterRequest{Spec: ordersSpec("orders")})
	if err != nil || resp.Created || resp.Cluster.GetSpecVersion() != 2 {
		t.Errorf("re-apply after restart: %+v, %v", resp, err)
	}
}

func TestLaggingFollowerCatchesUpThroughSnapshot(t *testing.T) {
	c := witnesstest.Start(t, 3, witnesstest.Options{SnapshotThreshold: 32, TrailingLogs: 8})
	leader := c.WaitLeader(wait)
	c.WaitReady(wait)
	lagger := c.Follower(leader)
	c.StopNode(lagger)
	ctx := witnesstest.Context(t, 2*wait)
	const n = 120
	for k := range n {
		applyRetrying(t, ctx, c, leader, ordersSpec(fmt.Sprintf("c%03d", k)))
	}
	// Compact the log on both running witnesses (a leader change under load must not leave a
	// leader that could still send the old entries), keeping only TrailingLogs entries.
	for _, i := range c.Running() {
		if err := c.Agents[i].Store().Snapshot(); err != nil {
			t.Fatal(err)
		}
	}
	c.StartNode(lagger)
	witnesstest.Eventually(t, wait, "lagging follower has every cluster, from an installed snapshot", func() bool {
		stats := c.Agents[lagger].Store().Raft().Stats()
		return len(c.Agents[lagger].FSM().Clusters()) == n && stats["last_snapshot_index"] != "0"
	})
	leader = c.WaitLeader(wait)
	lst, _ := c.Agents[leader].FSM().State()
	fst, _ := c.Agents[lagger].FSM().State()
	if len(lst.Clusters) != len(fst.Clusters) || len(lst.Audit) != len(fst.Audit) {
		t.Errorf("follower state differs: %d/%d clusters, %d/%d audit", len(fst.Clusters), len(lst.Clusters), len(fst.Audit), len(lst.Audit))
	}
}

func TestRemoveAndReAddMember(t *testing.T) {
	c := witnesstest.Start(t, 3, witnesstest.Options{})
	leader := c.WaitLeader(wait)
	c.WaitReady(wait)
	c.WaitMembers(wait)
	victim := c.Follower(leader)
	oldID := c.Agents[victim].ID()
	ctx := witnesstest.Context(t, 2*wait)
	// Removal may be asked of any witness, here the victim's neighbour follower or the leader.
	if _, err := c.Client(leader).RemoveMember(ctx, &regentv1.RemoveMemberRequest{Name: c.Configs[victim].NodeName}); err != nil {
		t.Fatal(err)
	}
	if _, in := voters(t, c, leader)[oldID]; in {
		t.Fatal("removed witness still in the raft configuration")
	}
	// While it keeps running and gossiping, reconciliation does not add it back.
	start := c.Agents[leader].Reconciles()
	witnesstest.Eventually(t, wait, "two more reconcile rounds", func() bool { return c.Agents[leader].Reconciles() >= start+2 })
	if _, in := voters(t, c, leader)[oldID]; in {
		t.Fatal("removed witness was re-added while still running")
	}
	resp, err := c.Client(leader).Members(ctx, &regentv1.MembersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range resp.Members {
		if m.Id == oldID {
			t.Errorf("removed witness still listed: %+v", m)
		}
	}
	_, err = c.Client(leader).RemoveMember(ctx, &regentv1.RemoveMemberRequest{Name: "nobody"})
	if status.Code(err) != codes.NotFound {
		t.Errorf("remove of unknown witness: %v", err)
	}
	// Re-adding: the operator wipes its data directory and starts it again.
	c.StopNode(victim)
	c.WipeNode(victim)
	c.StartNode(victim)
	newID := c.Agents[victim].ID()
	if newID == oldID {
		t.Fatal("wiped witness kept its identity")
	}
	witnesstest.Eventually(t, wait, "re-added witness is a voter", func() bool {
		return voters(t, c, leader)[newID]
	})
	witnesstest.Eventually(t, wait, "re-added witness has the member record", func() bool {
		m, ok := c.Agents[leader].FSM().Member(c.Configs[victim].NodeName)
		return ok && m.GetId() == newID
	})
	c.WaitReady(wait)
}

func TestWritesWithoutQuorumAreUnavailableWithRetryHint(t *testing.T) {
	c := witnesstest.Start(t, 3, witnesstest.Options{})
	leader := c.WaitLeader(wait)
	c.WaitReady(wait)
	survivor := c.Follower(leader)
	for _, i := range c.Running() {
		if i != survivor {
			c.StopNode(i)
		}
	}
	ctx := witnesstest.Context(t, wait)
	var err error
	witnesstest.Eventually(t, wait, "survivor notices it has no leader", func() bool {
		id, _ := c.Agents[survivor].Store().Leader()
		return id == ""
	})
	_, err = c.Client(survivor).ApplyCluster(ctx, &regentv1.ApplyClusterRequest{Spec: ordersSpec("orders")})
	st := status.Convert(err)
	if st.Code() != codes.Unavailable {
		t.Fatalf("write without quorum: %v, want Unavailable", err)
	}
	hinted := false
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay().AsDuration() > 0 {
			hinted = true
		}
	}
	if !hinted || !strings.Contains(st.Message(), "retry") {
		t.Errorf("no retry hint in %v (details %v)", st.Message(), st.Details())
	}
	// A local read still answers.
	if _, err := c.Client(survivor).GetState(ctx, &regentv1.GetStateRequest{}); err != nil {
		t.Errorf("local read without quorum: %v", err)
	}
}

func TestWatchStreamsSnapshotThenChanges(t *testing.T) {
	c := witnesstest.Start(t, 3, witnesstest.Options{})
	leader := c.WaitLeader(wait)
	c.WaitReady(wait)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	stream, err := c.Client(c.Follower(leader)).Watch(ctx, &regentv1.WatchRequest{FromIndex: 0})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if first.Kind != "snapshot" || first.State == nil {
		t.Fatalf("first watch event %v, want a snapshot", first)
	}
	if _, err := c.Client(leader).ApplyCluster(ctx, &regentv1.ApplyClusterRequest{Spec: ordersSpec("orders")}); err != nil {
		t.Fatal(err)
	}
	for {
		ev, err := stream.Recv()
		if err != nil {
			t.Fatalf("watch ended before the cluster change: %v", err)
		}
		if ev.Index <= first.Index {
			t.Errorf("event index %d not after snapshot index %d", ev.Index, first.Index)
		}
		if ev.Kind == "cluster" && ev.Key == "orders" && ev.Cluster.GetPrimary() == "pg-us" {
			break
		}
	}
}

func TestHTTPEndpoints(t *testing.T) {
	c := witnesstest.Start(t, 3, witnesstest.Options{})
	leader := c.WaitLeader(wait)
	c.WaitReady(wait)
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + c.Configs[leader].HTTPAddr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/healthz"); code != 200 || !strings.Contains(body, `"ok"`) {
		t.Errorf("/healthz = %d %s", code, body)
	}
	if code, body := get("/readyz"); code != 200 || !strings.Contains(body, `"ready":true`) {
		t.Errorf("/readyz = %d %s", code, body)
	}
	ctx := witnesstest.Context(t, wait)
	if _, err := c.Client(leader).GetState(ctx, &regentv1.GetStateRequest{}); err != nil {
		t.Fatal(err)
	}
	_, body := get("/metrics")
	for _, want := range []string{
		`regent_raft_state{state="Leader"} 1`, "regent_raft_term ", "regent_raft_commit_index ", "regent_raft_applied_index ",
		"regent_raft_leader_changes_total ", "regent_raft_apply_duration_seconds_count ", `regent_members{state="alive"} 3`,
		`regent_grpc_requests_total{code="OK",method="GetState"}`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func TestLeaseRenewalsAndDurableRevocation(t *testing.T) {
	c := witnesstest.Start(t, 3, witnesstest.Options{})
	leader := c.WaitLeader(wait)
	c.WaitReady(wait)
	ctx := witnesstest.Context(t, 2*wait)
	applyRetrying(t, ctx, c, leader, ordersSpec("orders"))
	renew := func(i int, node string, epoch uint64) *regentv1.RenewLeaseResponse {
		t.Helper()
		var resp *regentv1.RenewLeaseResponse
		witnesstest.Eventually(t, wait, "a renewal answer", func() bool {
			var err error
			resp, err = c.Client(i).RenewLease(ctx, &regentv1.RenewLeaseRequest{Cluster: "orders", Node: node, Epoch: epoch})
			return err == nil && resp.GetCurrentEpoch() != 0 // the witness has applied the cluster
		})
		return resp
	}
	for i := range c.Agents {
		if r := renew(i, "pg-us", 1); !r.GetGranted() || r.GetPrimary() != "pg-us" || r.GetWitness() != c.Configs[i].NodeName {
			t.Errorf("w%d: primary's renewal %v", i+1, r)
		}
		if r := renew(i, "pg-eu", 1); r.GetGranted() || !strings.Contains(r.GetReason(), "not the primary") {
			t.Errorf("w%d granted a standby: %v", i+1, r)
		}
		if r := renew(i, "pg-us", 2); r.GetGranted() {
			t.Errorf("w%d granted an epoch it does not know: %v", i+1, r)
		}
	}
	// Renewals carry the policy's lease_ttl and the number of witnesses (for the keeper's
	// majority).
	if r := renew(leader, "pg-us", 1); r.GetLeaseTtlMs() != spec.DefaultLeaseTTL.Milliseconds() || r.GetVoters() != 3 {
		t.Errorf("renewal carries lease_ttl_ms %d and voters %d, want %d and 3", r.GetLeaseTtlMs(), r.GetVoters(), spec.DefaultLeaseTTL.Milliseconds())
	}
	// w2 revokes epoch 1; it refuses from then on, also after a restart; the others still grant.
	// Its answer says how long before the revocation it last granted: at least the time since
	// the grant just before, which the test measures from outside.
	f := c.Follower(leader)
	sent := time.Now()
	renew(f, "pg-us", 1)
	granted := time.Now()
	witnesstest.Eventually(t, wait, "some time since the last grant", func() bool { return time.Since(granted) > 200*time.Millisecond })
	before := time.Since(granted)
	rv, err := c.Client(f).RevokeLease(ctx, &regentv1.RevokeLeaseRequest{Cluster: "orders", Epoch: 1, Term: 1, EventId: 1})
	if err != nil {
		t.Fatal(err)
	}
	if since := time.Duration(rv.GetSinceLastGrantMs()) * time.Millisecond; since < before-time.Millisecond || since > time.Since(sent) {
		t.Errorf("since_last_grant %v, want between %v and %v", since, before, time.Since(sent))
	}
	if r := renew(f, "pg-us", 1); r.GetGranted() || !strings.Contains(r.GetReason(), "revoked") {
		t.Errorf("revoked epoch granted: %v", r)
	}
	c.StopNode(f)
	c.StartNode(f)
	if r := renew(f, "pg-us", 1); r.GetGranted() {
		t.Errorf("revoked epoch granted after a restart: %v", r)
	}
	// Restarted, it no longer knows when it last granted: 0, the safe answer.
	if rv, err := c.Client(f).RevokeLease(ctx, &regentv1.RevokeLeaseRequest{Cluster: "orders", Epoch: 1, Term: 1, EventId: 1}); err != nil || rv.GetSinceLastGrantMs() != 0 {
		t.Errorf("a restarted witness answered since_last_grant %d (%v), want 0", rv.GetSinceLastGrantMs(), err)
	}
	if r := renew(leader, "pg-us", 1); !r.GetGranted() {
		t.Errorf("a witness that did not revoke refused: %v", r)
	}
	// A renewal is answered locally even without a Raft leader.
	for _, i := range c.Running() {
		if i != leader {
			c.StopNode(i)
		}
	}
	witnesstest.Eventually(t, wait, "no leader", func() bool { id, _ := c.Agents[leader].Store().Leader(); return id == "" })
	if r := renew(leader, "pg-us", 1); !r.GetGranted() {
		t.Errorf("renewal refused during an election: %v", r)
	}
}

// Once a failover is past its fence, the candidate's keeper may take the next epoch, and the
// old primary gets nothing more.
func TestLeaseGoesToTheCandidateOncePastTheFence(t *testing.T) {
	c := witnesstest.Start(t, 3, witnesstest.Options{})
	leader := c.WaitLeader(wait)
	c.WaitReady(wait)
	ctx := witnesstest.Context(t, 2*wait)
	applyRetrying(t, ctx, c, leader, ordersSpec("orders"))
	st := c.Agents[leader].Store()
	propose := func(typ regentv1.CommandType, p proto.Message) *fsm.Result {
		t.Helper()
		res, err := st.Propose(ctx, typ, p, "test")
		if err != nil || res.Err != nil {
			t.Fatalf("%v: %v %v", typ, err, res.Err)
		}
		return res
	}
	ev := propose(regentv1.CommandType_COMMAND_TYPE_START_FAILOVER, &regentv1.StartFailoverCommand{
		Cluster: "orders", FromNode: "pg-us", ToNode: "pg-eu", TriggerReason: "test", Term: st.Term()}).Event
	renew := func(node string, epoch uint64) *regentv1.RenewLeaseResponse {
		t.Helper()
		resp, err := c.Client(leader).RenewLease(ctx, &regentv1.RenewLeaseRequest{Cluster: "orders", Node: node, Epoch: epoch})
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	if r := renew("pg-eu", 2); r.GetGranted() {
		t.Errorf("candidate granted the next epoch before the fence: %v", r)
	}
	propose(regentv1.CommandType_COMMAND_TYPE_ADVANCE_FAILOVER, &regentv1.AdvanceFailoverCommand{
		EventId: ev.GetId(), Step: regentv1.FailoverStep_FAILOVER_STEP_FENCED, Term: st.Term(), FenceMethod: "sql"})
	if r := renew("pg-eu", 2); !r.GetGranted() || r.GetCurrentEpoch() != 2 || r.GetPrimary() != "pg-eu" {
		t.Errorf("candidate past the fence: %v", r)
	}
	if r := renew("pg-us", 1); r.GetGranted() {
		t.Errorf("old primary granted after its fence: %v", r)
	}
}
