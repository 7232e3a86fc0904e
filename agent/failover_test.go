package agent_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/regentdb/regent/cli"
	"github.com/regentdb/regent/config"
	"github.com/regentdb/regent/dnspub"
	"github.com/regentdb/regent/dnstest"
	"github.com/regentdb/regent/internal/witnesstest"
	"github.com/regentdb/regent/pgops"
	"github.com/regentdb/regent/pgtest"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// failoverRig is a real PostgreSQL primary (pg-us, 127.0.0.1) with two streaming standbys
// (pg-eu on 127.0.0.2, pg-ap on 127.0.0.3), a real named holding the cluster's DNS record,
// and three witnesses, with the cluster applied and observed.
type failoverRig struct {
	*observeRig
	dns    *dnstest.Server
	record string
	hook   *hookReceiver
}

type rigOptions struct {
	policy    func(p *regentv1.Policy)
	bench     pgtest.Options
	configure func(i int, cfg *config.Agent, b *pgtest.Bench)
}

func failoverPolicy() *regentv1.Policy {
	p := testPolicy()
	p.LeaseTtlMs = 1000
	p.FailoverLagThresholdMs = 2000 // a standby more than 2 s behind is not promoted
	return p
}

func startFailoverRig(t *testing.T, o rigOptions) *failoverRig {
	t.Helper()
	bo := o.bench
	bo.Standbys = 2
	b := pgtest.Start(t, bo)
	ns := dnstest.Start(t, dnstest.Options{})
	keyFile := filepath.Join(t.TempDir(), "regent-key.secret")
	if err := os.WriteFile(keyFile, []byte(ns.Key().Secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	hook := newHookReceiver()
	t.Cleanup(hook.Close)
	r := &failoverRig{dns: ns, record: "orders-primary." + ns.Zone(), hook: hook}
	r.observeRig = &observeRig{bench: b, primary: b.Servers()[0], eu: b.Servers()[1], ap: b.Servers()[2]}
	r.c = witnesstest.Start(t, 3, witnesstest.Options{
		Alerts:  config.Alerts{WebhookURL: hook.URL, WebhookRetries: 1},
		DNSKeys: map[string]config.DNSKey{ns.Key().Name: {Algorithm: ns.Key().Algorithm, SecretFile: keyFile}},
		Configure: func(i int, cfg *config.Agent) {
			if o.configure != nil {
				o.configure(i, cfg, b)
			}
		},
	})
	r.leader = r.c.WaitLeader(wait)
	r.c.WaitReady(wait)
	pol := failoverPolicy()
	if o.policy != nil {
		o.policy(pol)
	}
	sp := &regentv1.ClusterSpec{
		Name: "orders", Primary: "pg-us", Policy: pol,
		Nodes: []*regentv1.NodeSpec{
			{Name: "pg-us", Region: "us-east", Host: r.primary.Host, Port: uint32(r.primary.Port)},
			{Name: "pg-eu", Region: "eu-west", Host: r.eu.Host, Port: uint32(r.eu.Port), Priority: 1},
			{Name: "pg-ap", Region: "ap-south", Host: r.ap.Host, Port: uint32(r.ap.Port)},
		},
		Dns: &regentv1.DnsSpec{Server: ns.Addr(), Zone: ns.Zone(), Record: r.record, Ttl: 5, TsigKey: ns.Key().Name},
	}
	applyRetrying(t, witnesstest.Context(t, wait), r.c, r.leader, sp)
	return r
}

// waitObserved waits until every node has three reachable votes and both channels are active.
func (r *failoverRig) waitObserved(t *testing.T) {
	t.Helper()
	witnesstest.Eventually(t, wait, "cluster observed healthy", func() bool {
		for _, n := range []string{"pg-us", "pg-eu", "pg-ap"} {
			if up, _ := votes(r.node(n)); up != 3 {
				return false
			}
		}
		return r.channel("eu-west").GetStatus() == regentv1.ChannelStatus_CHANNEL_STATUS_ACTIVE &&
			r.channel("ap-south").GetStatus() == regentv1.ChannelStatus_CHANNEL_STATUS_ACTIVE
	})
}

func (r *failoverRig) state() *regentv1.State {
	st, _ := r.c.Agents[r.c.Running()[0]].FSM().State()
	return st
}

func (r *failoverRig) cluster() *regentv1.Cluster {
	for _, c := range r.state().GetClusters() {
		if c.GetName() == "orders" {
			return c
		}
	}
	return nil
}

func (r *failoverRig) events() []*regentv1.FailoverEvent { return r.state().GetFailoverEvents() }

// waitEvent waits until event id reaches a final step and returns it.
func (r *failoverRig) waitEvent(t *testing.T, id uint64) *regentv1.FailoverEvent {
	t.Helper()
	var ev *regentv1.FailoverEvent
	witnesstest.Eventually(t, 2*wait, fmt.Sprintf("failover event %d to finish", id), func() bool {
		for _, e := range r.events() {
			if e.GetId() == id && (e.GetStep() == regentv1.FailoverStep_FAILOVER_STEP_COMPLETED || e.GetStep() == regentv1.FailoverStep_FAILOVER_STEP_ABORTED) {
				ev = e
				return true
			}
		}
		return false
	})
	return ev
}

func inRecovery(t *testing.T, s *pgtest.Server) bool {
	t.Helper()
	v, err := s.IsInRecovery(witnesstest.Context(t, wait))
	if err != nil {
		t.Fatalf("pg_is_in_recovery on %s: %v", s, err)
	}
	return v
}

func target(r *failoverRig, s *pgtest.Server) pgops.Target {
	return pgops.Target{Host: s.Host, Port: uint16(s.Port), User: pgtest.SuperUser, Database: "postgres", Password: r.bench.Password(), SSLMode: "disable", Node: s.Name}
}

func TestKillPrimaryFailsOverToTheBestStandby(t *testing.T) {
	r := startFailoverRig(t, rigOptions{})
	r.waitObserved(t)
	ctx := witnesstest.Context(t, 3*wait)
	// pg-ap falls behind: its replay is paused under a write load, past failover_lag_threshold.
	load, err := r.primary.WriteLoad(ctx, 50)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.ap.PauseReplay(ctx); err != nil {
		t.Fatal(err)
	}
	witnesstest.Eventually(t, wait, "pg-ap's channel more than 2 s behind", func() bool {
		return r.channel("ap-south").GetLagSeconds() > 2
	})
	if err := r.primary.Kill9(); err != nil {
		t.Fatal(err)
	}
	load.Stop()
	var id uint64
	witnesstest.Eventually(t, wait, "a failover event", func() bool {
		if evs := r.events(); len(evs) > 0 {
			id = evs[0].GetId()
			return true
		}
		return false
	})
	ev := r.waitEvent(t, id)
	if ev.GetStep() != regentv1.FailoverStep_FAILOVER_STEP_COMPLETED {
		t.Fatalf("failover ended %v: %s (notes %v)", ev.GetStep(), ev.GetAbortReason(), ev.GetNotes())
	}
	if ev.GetFromNode() != "pg-us" || ev.GetToNode() != "pg-eu" || ev.GetFromRegion() != "us-east" || ev.GetToRegion() != "eu-west" {
		t.Errorf("failover %s (%s) → %s (%s), want pg-us → pg-eu", ev.GetFromNode(), ev.GetFromRegion(), ev.GetToNode(), ev.GetToRegion())
	}
	if len(ev.GetSteps()) != 6 || ev.GetStartedAt() == nil || ev.GetCompletedAt() == nil || ev.DataLossBytes == nil || ev.GetDataLossExact() {
		t.Errorf("event lacks its record: steps %v, started %v, completed %v, loss %v exact %v", ev.GetSteps(), ev.GetStartedAt(), ev.GetCompletedAt(), ev.DataLossBytes, ev.GetDataLossExact())
	}
	if ev.GetFenceMethod() != "lease" { // a dead postmaster confirms nothing: revoke and wait
		t.Errorf("fence method %q, want lease", ev.GetFenceMethod())
	}
	// The old primary's lease epoch is revoked at every witness, and the cluster moved on.
	for _, i := range r.c.Running() {
		resp, err := r.c.Client(i).RenewLease(ctx, &regentv1.RenewLeaseRequest{Cluster: "orders", Node: "pg-us", Epoch: 1})
		if err != nil || resp.GetGranted() {
			t.Errorf("w%d granted the old primary's epoch after failover: %v %v", i+1, resp, err)
		}
	}
	if c := r.cluster(); c.GetLeaseEpoch() != 2 {
		t.Errorf("lease epoch %d after one promotion, want 2", c.GetLeaseEpoch())
	}
	if !ev.GetPublished() || ev.GetPromotedTimeline() != 2 {
		t.Errorf("published %v (%s), promoted timeline %d", ev.GetPublished(), ev.GetPublishError(), ev.GetPromotedTimeline())
	}
	// Exactly one standby was promoted: the best one.
	if inRecovery(t, r.eu) || !inRecovery(t, r.ap) {
		t.Fatalf("pg-eu in recovery %v, pg-ap in recovery %v; want only pg-eu promoted", inRecovery(t, r.eu), inRecovery(t, r.ap))
	}
	if c := r.cluster(); c.GetPrimary() != "pg-eu" {
		t.Errorf("cluster primary %q", c.GetPrimary())
	}
	// The other standby follows the new primary.
	if err := r.ap.ResumeReplay(ctx); err != nil {
		t.Fatal(err)
	}
	if err := pgops.WaitStreamingFrom(ctx, target(r, r.ap), r.eu.Host, uint16(r.eu.Port)); err != nil {
		t.Errorf("pg-ap does not stream from pg-eu: %v", err)
	}
	// DNS answers the new primary's address, with this event's token.
	addrs, token, err := dnspub.Lookup(ctx, r.dns.Addr(), r.record)
	if err != nil || len(addrs) != 1 || addrs[0] != r.eu.Host || token != r.cluster().GetDnsToken() || token == "" {
		t.Errorf("DNS: %v token %q (cluster token %q), err %v; want [%s]", addrs, token, r.cluster().GetDnsToken(), err, r.eu.Host)
	}
	if dig, err := exec.LookPath("dig"); err == nil {
		host, port, _ := strings.Cut(r.dns.Addr(), ":")
		out, err := exec.CommandContext(ctx, dig, "@"+host, "-p", port, r.record, "A", "+short").Output()
		if err != nil || strings.TrimSpace(string(out)) != r.eu.Host {
			t.Errorf("dig answers %q (%v), want %s", out, err, r.eu.Host)
		}
	}
	// An update from a stale leader (carrying a token older than the current one) is refused.
	stale := dnspub.Update{Server: r.dns.Addr(), Zone: r.dns.Zone(), Record: r.record, TTL: 5, Target: r.primary.Host,
		PrevToken: "", NewToken: "regent term=1 event=99", Key: r.dns.Key()}
	if err := dnspub.Publish(ctx, stale); err == nil {
		t.Error("a DNS update with a stale token was accepted")
	}
	if addrs, _, _ := dnspub.Lookup(ctx, r.dns.Addr(), r.record); len(addrs) != 1 || addrs[0] != r.eu.Host {
		t.Errorf("stale update changed DNS to %v", addrs)
	}
	// The channels turned round: eu-west is now the primary region.
	witnesstest.Eventually(t, wait, "channels from eu-west", func() bool {
		for _, ch := range r.state().GetChannels() {
			if ch.GetPrimaryRegion() != "eu-west" {
				return false
			}
		}
		return len(r.state().GetChannels()) == 2
	})
	witnesstest.Eventually(t, wait, "webhook heard of the completed failover", func() bool { return r.hook.has("failover_completed", "orders") })

	// The old primary, started again by hand, comes up writable; regent makes it read-only.
	if err := r.primary.Start(ctx); err != nil {
		t.Fatal(err)
	}
	witnesstest.Eventually(t, wait, "restarted old primary fenced again", func() bool {
		var ro string
		err := r.primary.QueryRow(ctx, "SELECT current_setting('default_transaction_read_only')").Scan(&ro)
		return err == nil && ro == "on"
	})
	if err := r.primary.Exec(ctx, "CREATE TABLE split_brain (id int)"); err == nil {
		t.Error("the old primary accepted a write after failover")
	}
}

func TestMinorityCutOffFromPrimaryDoesNotFailOver(t *testing.T) {
	// Witness w1 cannot log in to any node (a wrong password): it alone votes the primary down.
	r := startFailoverRig(t, rigOptions{
		bench: pgtest.Options{PasswordAuth: true},
		configure: func(i int, cfg *config.Agent, b *pgtest.Bench) {
			pass := filepath.Join(cfg.DataDir + "-pgpass")
			pw := b.Password()
			if i == 0 {
				pw = "wrong"
			}
			if err := os.WriteFile(pass, []byte("*:*:*:regent:"+pw+"\n"), 0o600); err != nil {
				panic(err)
			}
			cfg.Postgres.PasswordFile = pass
		},
	})
	witnesstest.Eventually(t, wait, "w1 votes every node down, the others up", func() bool {
		for _, n := range []string{"pg-us", "pg-eu", "pg-ap"} {
			if up, down := votes(r.node(n)); up != 2 || down != 1 {
				return false
			}
		}
		return true
	})
	since := time.Now()
	pol := failoverPolicy()
	witnesstest.Eventually(t, wait, "well past down_after", func() bool {
		return time.Since(since) > 3*time.Duration(pol.GetDownAfterMs())*time.Millisecond
	})
	if evs := r.events(); len(evs) != 0 {
		t.Fatalf("a minority's view caused failover: %v", evs)
	}
	if c := r.cluster(); c.GetPrimary() != "pg-us" || c.GetRefusal() != "" {
		t.Errorf("primary %q, refusal %q", c.GetPrimary(), c.GetRefusal())
	}
	if inRecovery(t, r.eu) == false || inRecovery(t, r.ap) == false {
		t.Error("a standby was promoted")
	}
}

func TestPrimaryStillStreamingToAStandbyIsNotFailedOver(t *testing.T) {
	// Every witness is refused by the primary (wrong password for its address only), but the
	// standbys still stream from it: the witnesses' view is partitioned, not the primary dead.
	r := startFailoverRig(t, rigOptions{
		bench: pgtest.Options{PasswordAuth: true},
		configure: func(i int, cfg *config.Agent, b *pgtest.Bench) {
			pass := cfg.DataDir + "-pgpass"
			p := b.Servers()[0]
			text := fmt.Sprintf("%s:%d:*:regent:wrong\n*:*:*:regent:%s\n", p.Host, p.Port, b.Password())
			if err := os.WriteFile(pass, []byte(text), 0o600); err != nil {
				panic(err)
			}
			cfg.Postgres.PasswordFile = pass
		},
	})
	witnesstest.Eventually(t, wait, "refusal recorded: a standby still streams from the primary", func() bool {
		return strings.Contains(r.cluster().GetRefusal(), "stream")
	})
	witnesstest.Eventually(t, wait, "alert sent", func() bool { return r.hook.has("failover_declined", "orders") })
	if evs := r.events(); len(evs) != 0 {
		t.Fatalf("failover despite a streaming standby: %v", evs)
	}
	if inRecovery(t, r.primary) {
		t.Error("primary in recovery")
	}
}

func TestPausedClusterWaitsThenCooldownHolds(t *testing.T) {
	r := startFailoverRig(t, rigOptions{})
	r.waitObserved(t)
	ctx := witnesstest.Context(t, 3*wait)
	if _, err := r.c.Client(r.c.Follower(r.leader)).Pause(ctx, &regentv1.PauseRequest{Cluster: "orders", Reason: "maintenance"}); err != nil {
		t.Fatal(err)
	}
	if err := r.primary.Kill9(); err != nil {
		t.Fatal(err)
	}
	witnesstest.Eventually(t, wait, "refusal: paused", func() bool { return strings.Contains(r.cluster().GetRefusal(), "paused") })
	if len(r.events()) != 0 {
		t.Fatal("failover while paused")
	}
	if _, err := r.c.Client(r.leader).Resume(ctx, &regentv1.ResumeRequest{Cluster: "orders"}); err != nil {
		t.Fatal(err)
	}
	witnesstest.Eventually(t, wait, "failover after resume", func() bool { return len(r.events()) == 1 })
	ev := r.waitEvent(t, r.events()[0].GetId())
	if ev.GetStep() != regentv1.FailoverStep_FAILOVER_STEP_COMPLETED {
		t.Fatalf("failover after resume ended %v: %s", ev.GetStep(), ev.GetAbortReason())
	}
	// The new primary dies too, inside the cooldown: no second failover.
	newPrimary := r.eu
	if ev.GetToNode() == "pg-ap" {
		newPrimary = r.ap
	}
	if err := newPrimary.Kill9(); err != nil {
		t.Fatal(err)
	}
	witnesstest.Eventually(t, wait, "refusal: cooldown", func() bool { return strings.Contains(r.cluster().GetRefusal(), "cooldown") })
	if n := len(r.events()); n != 1 {
		t.Fatalf("%d failovers; the cooldown should have held the second", n)
	}
}

func TestPrePromoteVetoAborts(t *testing.T) {
	r := startFailoverRig(t, rigOptions{policy: func(p *regentv1.Policy) {
		p.PrePromoteCommand = `echo "change freeze in effect for $REGENT_CLUSTER"; exit 3`
	}})
	r.waitObserved(t)
	if err := r.primary.Kill9(); err != nil {
		t.Fatal(err)
	}
	witnesstest.Eventually(t, wait, "a failover event", func() bool { return len(r.events()) > 0 })
	ev := r.waitEvent(t, r.events()[0].GetId())
	if ev.GetStep() != regentv1.FailoverStep_FAILOVER_STEP_ABORTED || !strings.Contains(ev.GetAbortReason(), "change freeze in effect for orders") {
		t.Fatalf("event %v: abort reason %q", ev.GetStep(), ev.GetAbortReason())
	}
	if !inRecovery(t, r.eu) || !inRecovery(t, r.ap) {
		t.Error("a standby was promoted despite the veto")
	}
}

func TestLeaderKilledAfterFenceCommitsNewLeaderFinishes(t *testing.T) {
	gate := filepath.Join(t.TempDir(), "promote-gate")
	r := startFailoverRig(t, rigOptions{policy: func(p *regentv1.Policy) {
		// Hold the first leader at the promotion step until the test has killed it.
		p.PrePromoteCommand = fmt.Sprintf(`while [ ! -e %s ]; do sleep 0.05; done`, gate)
		p.CommandTimeoutMs = 60000
	}})
	r.waitObserved(t)
	leader := r.c.WaitLeader(wait)
	if err := r.primary.Kill9(); err != nil {
		t.Fatal(err)
	}
	var first *regentv1.FailoverEvent
	witnesstest.Eventually(t, wait, "fenced step committed", func() bool {
		st, _ := r.c.Agents[leader].FSM().State()
		for _, ev := range st.GetFailoverEvents() {
			if ev.GetStep() == regentv1.FailoverStep_FAILOVER_STEP_FENCED {
				first = ev
				return true
			}
		}
		return false
	})
	r.c.StopNode(leader)
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	r.leader = r.c.WaitLeader(wait)
	ev := r.waitEvent(t, first.GetId())
	if ev.GetStep() != regentv1.FailoverStep_FAILOVER_STEP_COMPLETED {
		t.Fatalf("saga ended %v: %s", ev.GetStep(), ev.GetAbortReason())
	}
	if ev.GetTerm() <= first.GetTerm() {
		t.Errorf("event term %d: the new leader (term > %d) should own the finished saga", ev.GetTerm(), first.GetTerm())
	}
	if len(r.events()) != 1 {
		t.Errorf("%d events; want the one saga resumed", len(r.events()))
	}
	promoted := 0
	for _, s := range []*pgtest.Server{r.eu, r.ap} {
		if !inRecovery(t, s) {
			promoted++
			var n int
			if err := s.QueryRow(witnesstest.Context(t, wait), "SELECT count(*) FROM regent.promotions").Scan(&n); err != nil || n != 1 {
				t.Errorf("%s recorded %d promotions (%v); want exactly one", s.Name, n, err)
			}
			if tl, _ := s.Timeline(witnesstest.Context(t, wait)); tl != 2 {
				t.Errorf("%s on timeline %d, want 2", s.Name, tl)
			}
		}
	}
	if promoted != 1 {
		t.Errorf("%d standbys promoted, want exactly one", promoted)
	}
}

func TestManualFailoverFromTheCLIFencesTheLivePrimary(t *testing.T) {
	r := startFailoverRig(t, rigOptions{})
	r.waitObserved(t)
	ctx := witnesstest.Context(t, 3*wait)
	// A client session on the old primary, which the SQL fence must end.
	conn, err := r.primary.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var out, errOut bytes.Buffer
	addr := r.c.Configs[r.c.Follower(r.leader)].GRPCAddr
	if code := cli.Run(ctx, []string{"--addr", addr, "failover", "--cluster", "orders", "--to", "pg-ap", "--reason", "drill"}, &out, &errOut); code != 0 {
		t.Fatalf("regent failover: exit %d: %s %s", code, out.String(), errOut.String())
	}
	if !strings.Contains(out.String(), "pg-ap") {
		t.Errorf("failover output %q", out.String())
	}
	witnesstest.Eventually(t, wait, "a failover event", func() bool { return len(r.events()) == 1 })
	ev := r.waitEvent(t, r.events()[0].GetId())
	if ev.GetStep() != regentv1.FailoverStep_FAILOVER_STEP_COMPLETED || ev.GetToNode() != "pg-ap" || !ev.GetManual() || ev.GetFenceMethod() != "sql" {
		t.Fatalf("manual failover: step %v to %s manual %v fence %q (%s; notes %v)", ev.GetStep(), ev.GetToNode(), ev.GetManual(), ev.GetFenceMethod(), ev.GetAbortReason(), ev.GetNotes())
	}
	if !strings.Contains(ev.GetTriggerReason(), "drill") {
		t.Errorf("trigger reason %q", ev.GetTriggerReason())
	}
	// The old primary is read-only and its client was cut; pg-eu follows pg-ap.
	if _, err := conn.Exec(ctx, "SELECT 1"); err == nil {
		t.Error("the old primary's client session survived the fence")
	}
	if err := r.primary.Exec(ctx, "CREATE TABLE split_brain (id int)"); err == nil {
		t.Error("the fenced old primary accepted a write")
	}
	if err := pgops.WaitStreamingFrom(ctx, target(r, r.eu), r.ap.Host, uint16(r.ap.Port)); err != nil {
		t.Errorf("pg-eu does not stream from pg-ap: %v", err)
	}
	// The operator's action is in the audit trail.
	found := false
	for _, a := range r.state().GetAudit() {
		found = found || (a.GetAction() == "cluster.failover" && a.GetTarget() == "orders" && a.GetActor() == cli.Actor())
	}
	if !found {
		t.Errorf("no audit record of the manual failover by %s: %v", cli.Actor(), r.state().GetAudit())
	}
	// Asking for a node that cannot be promoted changes nothing.
	out.Reset()
	errOut.Reset()
	if code := cli.Run(ctx, []string{"--addr", addr, "failover", "--cluster", "orders", "--to", "pg-nowhere"}, &out, &errOut); code == 0 {
		t.Errorf("failover to an unknown node succeeded: %s", out.String())
	}
	if n := len(r.events()); n != 1 {
		t.Errorf("%d events after a refused request", n)
	}
}
