package agent_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/regentdb/regent/config"
	"github.com/regentdb/regent/internal/witnesstest"
	"github.com/regentdb/regent/pgtest"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// observeRig is a real PostgreSQL primary with two streaming standbys, watched by three
// witnesses, with the cluster spec applied.
type observeRig struct {
	bench   *pgtest.Bench
	c       *witnesstest.Cluster
	leader  int
	primary *pgtest.Server
	eu, ap  *pgtest.Server
}

func testPolicy() *regentv1.Policy {
	return &regentv1.Policy{
		ProbeIntervalMs:     200,
		ProbeTimeoutMs:      150,
		DownAfterMs:         1000,
		LagAlertThresholdMs: 1000, // lagging beyond 2 s (the seed's twice-the-threshold rule)
	}
}

func startObserveRig(t *testing.T, opts witnesstest.Options, extra ...*regentv1.NodeSpec) *observeRig {
	t.Helper()
	b := pgtest.Start(t, pgtest.Options{Standbys: 2})
	r := &observeRig{bench: b, primary: b.Servers()[0], eu: b.Servers()[1], ap: b.Servers()[2]}
	r.c = witnesstest.Start(t, 3, opts)
	r.leader = r.c.WaitLeader(wait)
	r.c.WaitReady(wait)
	sp := &regentv1.ClusterSpec{
		Name: "orders", Primary: "pg-us", Policy: testPolicy(),
		Nodes: []*regentv1.NodeSpec{
			{Name: "pg-us", Region: "us-east", Host: r.primary.Host, Port: uint32(r.primary.Port)},
			{Name: "pg-eu", Region: "eu-west", Host: r.eu.Host, Port: uint32(r.eu.Port)},
			{Name: "pg-ap", Region: "ap-south", Host: r.ap.Host, Port: uint32(r.ap.Port)},
		},
	}
	sp.Nodes = append(sp.Nodes, extra...)
	applyRetrying(t, witnesstest.Context(t, wait), r.c, r.leader, sp)
	return r
}

// channel returns the committed channel from us-east to region, as the leader sees it.
func (r *observeRig) channel(region string) *regentv1.ReplicationChannel {
	st, _ := r.c.Agents[r.c.WaitLeader(wait)].FSM().State()
	for _, ch := range st.GetChannels() {
		if ch.GetCluster() == "orders" && ch.GetPrimaryRegion() == "us-east" && ch.GetSecondaryRegion() == region {
			return ch
		}
	}
	return nil
}

func (r *observeRig) node(name string) *regentv1.NodeStatus {
	cl, ok := r.c.Agents[r.c.WaitLeader(wait)].FSM().Cluster("orders")
	if !ok {
		return nil
	}
	for _, ns := range cl.GetNodeStatus() {
		if ns.GetName() == name {
			return ns
		}
	}
	return nil
}

// votes counts the committed reachable and unreachable votes for a node.
func votes(ns *regentv1.NodeStatus) (up, down int) {
	for _, v := range ns.GetVotes() {
		if v.GetReachable() {
			up++
		} else {
			down++
		}
	}
	return up, down
}

func TestObserveRolesChannelsAndVotes(t *testing.T) {
	r := startObserveRig(t, witnesstest.Options{})
	witnesstest.Eventually(t, wait, "roles and three reachable votes per node", func() bool {
		for name, role := range map[string]regentv1.NodeRole{"pg-us": regentv1.NodeRole_NODE_ROLE_PRIMARY,
			"pg-eu": regentv1.NodeRole_NODE_ROLE_REPLICA, "pg-ap": regentv1.NodeRole_NODE_ROLE_REPLICA} {
			ns := r.node(name)
			if up, _ := votes(ns); ns.GetRole() != role || up != 3 || ns.GetTimeline() != 1 {
				return false
			}
		}
		return true
	})
	if sid, _ := r.primary.SystemIdentifier(witnesstest.Context(t, wait)); r.node("pg-us").GetSystemIdentifier() != sid {
		t.Errorf("system identifier %d, want %d", r.node("pg-us").GetSystemIdentifier(), sid)
	}
	if ns := r.node("pg-eu"); ns.GetWalReceiverStatus() != "streaming" || ns.GetUpstream() == "" {
		t.Errorf("pg-eu receiver %q upstream %q", ns.GetWalReceiverStatus(), ns.GetUpstream())
	}
	witnesstest.Eventually(t, wait, "two active channels with fresh figures", func() bool {
		for _, region := range []string{"eu-west", "ap-south"} {
			ch := r.channel(region)
			if ch.GetStatus() != regentv1.ChannelStatus_CHANNEL_STATUS_ACTIVE || ch.GetPrimaryLsn() == 0 || ch.GetApplyLsn() == 0 || ch.GetLastSeenAt() == nil {
				return false
			}
		}
		return true
	})
	if a, b := r.channel("eu-west").GetId(), r.channel("ap-south").GetId(); a == 0 || b == 0 || a == b {
		t.Errorf("channel ids %d and %d", a, b)
	}

	// Killing a standby fails its channel and flips its votes; restarting it recovers both.
	ctx := witnesstest.Context(t, 2*wait)
	if err := r.ap.Kill9(); err != nil {
		t.Fatal(err)
	}
	witnesstest.Eventually(t, wait, "pg-ap unreachable to every witness and its channel failed", func() bool {
		up, down := votes(r.node("pg-ap"))
		return up == 0 && down == 3 && r.channel("ap-south").GetStatus() == regentv1.ChannelStatus_CHANNEL_STATUS_FAILED
	})
	if r.channel("eu-west").GetStatus() != regentv1.ChannelStatus_CHANNEL_STATUS_ACTIVE {
		t.Errorf("eu-west channel %v while only pg-ap is down", r.channel("eu-west").GetStatus())
	}
	for _, v := range r.node("pg-ap").GetVotes() {
		if v.GetError() != "refused" {
			t.Errorf("vote of %s: error class %q, want refused", v.GetWitness(), v.GetError())
		}
	}
	if err := r.ap.Start(ctx); err != nil {
		t.Fatal(err)
	}
	witnesstest.Eventually(t, wait, "pg-ap back and its channel active", func() bool {
		up, _ := votes(r.node("pg-ap"))
		return up == 3 && r.channel("ap-south").GetStatus() == regentv1.ChannelStatus_CHANNEL_STATUS_ACTIVE
	})
}

func TestPausedReplayMakesChannelLaggingThenActive(t *testing.T) {
	hook := newHookReceiver()
	defer hook.Close()
	r := startObserveRig(t, witnesstest.Options{Alerts: config.Alerts{WebhookURL: hook.URL, WebhookRetries: 1}})
	ctx := witnesstest.Context(t, 3*wait)
	witnesstest.Eventually(t, wait, "eu-west active", func() bool {
		return r.channel("eu-west").GetStatus() == regentv1.ChannelStatus_CHANNEL_STATUS_ACTIVE
	})
	load, err := r.primary.WriteLoad(ctx, 50)
	if err != nil {
		t.Fatal(err)
	}
	defer load.Stop()
	if err := r.eu.PauseReplay(ctx); err != nil {
		t.Fatal(err)
	}
	witnesstest.Eventually(t, wait, "eu-west lagging with growing lag", func() bool {
		ch := r.channel("eu-west")
		return ch.GetStatus() == regentv1.ChannelStatus_CHANNEL_STATUS_LAGGING && ch.GetLagSeconds() > 2 && ch.GetLagBytes() > 0
	})
	if ns := r.node("pg-eu"); !ns.GetReplayPaused() {
		t.Errorf("pg-eu replay_paused not reported")
	}
	if st := r.channel("ap-south").GetStatus(); st != regentv1.ChannelStatus_CHANNEL_STATUS_ACTIVE {
		t.Errorf("ap-south %v while only eu-west lags", st)
	}
	if err := r.eu.ResumeReplay(ctx); err != nil {
		t.Fatal(err)
	}
	witnesstest.Eventually(t, wait, "eu-west active again", func() bool {
		return r.channel("eu-west").GetStatus() == regentv1.ChannelStatus_CHANNEL_STATUS_ACTIVE
	})
	// The webhook heard about it: the lag crossing the RPO target and the status change.
	witnesstest.Eventually(t, wait, "webhook alerts", func() bool {
		return hook.has("lag_over_threshold", "orders") && hook.has("status_changed", "orders")
	})
}

func TestIdlePrimaryHeartbeatKeepsLagTrue(t *testing.T) {
	r := startObserveRig(t, witnesstest.Options{})
	ctx := witnesstest.Context(t, 2*wait)
	witnesstest.Eventually(t, wait, "heartbeats flowing to pg-eu", func() bool {
		ch := r.channel("eu-west")
		return ch.GetStatus() == regentv1.ChannelStatus_CHANNEL_STATUS_ACTIVE && ch.GetApplyLsn() > 0
	})
	// No client writes from here on. Sample the channel for a few seconds: the standby keeps
	// replaying fresh heartbeats, so its lag stays at (about) zero.
	var seen []time.Time
	witnesstest.Eventually(t, wait, "five seconds of samples", func() bool {
		ch := r.channel("eu-west")
		if ch.GetLagSeconds() > 1 || ch.GetStatus() != regentv1.ChannelStatus_CHANNEL_STATUS_ACTIVE {
			t.Fatalf("idle primary: channel %v lag %ds", ch.GetStatus(), ch.GetLagSeconds())
		}
		var hb *time.Time
		if err := r.eu.QueryRow(ctx, "SELECT max(ts) FROM regent.heartbeat WHERE cluster = 'orders'").Scan(&hb); err == nil && hb != nil {
			if len(seen) == 0 || hb.After(seen[len(seen)-1]) {
				seen = append(seen, *hb)
			}
		}
		return len(seen) >= 2 && seen[len(seen)-1].Sub(seen[0]) >= 3*time.Second
	})
}

func TestWrongSystemAndBlackHoleAreReportedNotTrusted(t *testing.T) {
	b := pgtest.Start(t, pgtest.Options{})
	ctx := witnesstest.Context(t, 2*wait)
	other, err := b.NewPrimary(ctx, "other")
	if err != nil {
		t.Fatal(err)
	}
	hole := pgtest.StartBlackHole(t)
	r := startObserveRig(t, witnesstest.Options{},
		&regentv1.NodeSpec{Name: "pg-impostor", Region: "eu-west", Host: other.Host, Port: uint32(other.Port)},
		&regentv1.NodeSpec{Name: "pg-hole", Region: "ap-south", Host: hole.Host(), Port: uint32(hole.Port())},
	)
	witnesstest.Eventually(t, wait, "impostor flagged and voted unreachable; hole voted unreachable", func() bool {
		imp, hol := r.node("pg-impostor"), r.node("pg-hole")
		iu, id := votes(imp)
		hu, hd := votes(hol)
		return imp.GetWrongSystem() && iu == 0 && id == 3 && hu == 0 && hd == 3
	})
	for _, v := range r.node("pg-hole").GetVotes() {
		if v.GetError() != "timeout" {
			t.Errorf("black hole vote of %s: %q, want timeout", v.GetWitness(), v.GetError())
		}
	}
	for _, v := range r.node("pg-impostor").GetVotes() {
		if v.GetError() != "wrong_system" {
			t.Errorf("impostor vote of %s: %q, want wrong_system", v.GetWitness(), v.GetError())
		}
	}
	// The impostor never becomes the eu-west channel's replica, and the real nodes stay healthy.
	if r.node("pg-impostor").GetRole() == regentv1.NodeRole_NODE_ROLE_PRIMARY {
		t.Error("impostor (another cluster's primary) taken as a primary")
	}
	witnesstest.Eventually(t, wait, "real channels active despite the bad nodes", func() bool {
		return r.channel("eu-west").GetStatus() == regentv1.ChannelStatus_CHANNEL_STATUS_ACTIVE &&
			r.channel("ap-south").GetStatus() == regentv1.ChannelStatus_CHANNEL_STATUS_ACTIVE
	})
}

func TestSteadyStateLogGrowthIsBounded(t *testing.T) {
	r := startObserveRig(t, witnesstest.Options{})
	witnesstest.Eventually(t, wait, "channels active", func() bool {
		return r.channel("eu-west").GetStatus() == regentv1.ChannelStatus_CHANNEL_STATUS_ACTIVE &&
			r.channel("ap-south").GetStatus() == regentv1.ChannelStatus_CHANNEL_STATUS_ACTIVE
	})
	leader := r.c.WaitLeader(wait)
	store := r.c.Agents[leader].Store()
	start, t0 := store.Raft().LastIndex(), time.Now()
	witnesstest.Eventually(t, wait, "five seconds pass", func() bool { return time.Since(t0) >= 5*time.Second })
	entries := store.Raft().LastIndex() - start
	secs := time.Since(t0).Seconds()
	// At most one channel batch per 200 ms interval plus rare flips: well under 10 entries/s.
	if rate := float64(entries) / secs; rate > 10 {
		t.Errorf("%d log entries in %.1fs (%.1f/s) in steady state", entries, secs, rate)
	}
	t.Logf("steady state: %d entries in %.1fs", entries, secs)
}

// hookReceiver is a local webhook that records the alerts it receives.
type hookReceiver struct {
	*httptest.Server
	mu     sync.Mutex
	alerts []map[string]any
}

func newHookReceiver() *hookReceiver {
	h := &hookReceiver{}
	h.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var m map[string]any
		if json.Unmarshal(body, &m) == nil {
			h.mu.Lock()
			h.alerts = append(h.alerts, m)
			h.mu.Unlock()
		}
	}))
	return h
}

func (h *hookReceiver) has(kind, cluster string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, a := range h.alerts {
		if a["kind"] == kind && a["cluster"] == cluster && fmt.Sprint(a["message"]) != "" {
			return true
		}
	}
	return false
}
