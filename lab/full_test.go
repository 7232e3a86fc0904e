package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/regentdb/regent/dnspub"
	"github.com/regentdb/regent/dnstest"
	"github.com/regentdb/regent/pgtest"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// startFull starts the whole lab for a test (skipped without PostgreSQL, failed under CI=true)
// and stops it when the test ends; on failure the PostgreSQL logs go to the test log.
func startFull(t *testing.T, ctx context.Context, dir string) *Lab {
	t.Helper()
	return startWith(t, ctx, Options{Dir: dir})
}

// startWith is startFull with options.
func startWith(t *testing.T, ctx context.Context, opts Options) *Lab {
	t.Helper()
	pgtest.RequirePostgres(t)
	var progress bytes.Buffer
	opts.Progress = &progress
	l, err := Start(ctx, opts)
	if err != nil {
		t.Fatalf("start the lab: %v\nprogress:\n%s", err, progress.String())
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range l.Nodes {
				t.Logf("--- end of %s's log:\n%s", n.Name, n.Server.LogTail(3000))
			}
		}
		l.Stop()
	})
	return l
}

// processGone reports whether process pid has exited: it no longer exists, or it is a zombie
// (a server a keeper started through pg_ctl is reparented to PID 1, which may reap it late).
func processGone(pid int) bool {
	if errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
		return true
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	_, rest, ok := strings.Cut(string(b), ") ")
	return ok && strings.HasPrefix(rest, "Z")
}

func TestFullLabFailsOverWhenThePrimaryIsKilled(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	l := startFull(t, ctx, "")
	if ok, why := l.Healthy(); !ok {
		t.Fatalf("Start returned before the cluster was healthy: %s", why)
	}
	if p := l.Primary(); p == nil || p.Name != "pg-us" || p.Server.Host != "127.0.0.1" || p.Region != "us-east" {
		t.Fatalf("primary at start: %+v", p)
	}
	var desc bytes.Buffer
	l.Describe(&desc)
	for _, want := range []string{"pg-us", "pg-eu", "eu-west", "pg-ap", "ap-south", "127.0.0.3", "REGENT_ADDR=" + l.Configs[0].GRPCAddr} {
		if !strings.Contains(desc.String(), want) {
			t.Errorf("description lacks %q:\n%s", want, desc.String())
		}
	}
	if _, err := dnstest.FindNamed(); err == nil {
		if l.DNS == nil || !strings.Contains(desc.String(), "dig @127.0.0.1") || l.Spec.GetDns().GetRecord() != Record {
			t.Fatalf("named is installed but the lab runs no DNS (%v):\n%s", l.DNSSkipped, desc.String())
		}
		if fi, err := os.Stat(l.keyFile()); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("TSIG secret file: %v, %v; want mode 0600", fi, err)
		}
		if addrs, _, err := dnspub.Lookup(ctx, l.DNS.Addr(), Record); err != nil || len(addrs) != 1 || addrs[0] != "127.0.0.1" {
			t.Errorf("DNS before failover: %v, %v; want the primary 127.0.0.1", addrs, err)
		}
	} else if l.DNS != nil || l.Spec.GetDns() != nil || !strings.Contains(desc.String(), "publishing skipped") {
		t.Errorf("without named the lab must say DNS is skipped:\n%s", desc.String())
	}

	load, err := l.Nodes[0].Server.WriteLoad(ctx, 50)
	if err != nil {
		t.Fatal(err)
	}
	if err := load.WaitAcked(ctx, 20); err != nil {
		t.Fatal(err)
	}
	killed, err := l.KillPrimary()
	if err != nil {
		t.Fatal(err)
	}
	load.Stop()
	if killed.Node.Name != "pg-us" || killed.PID == 0 || !processGone(killed.PID) {
		t.Fatalf("KillPrimary: %+v (gone %v)", killed, processGone(killed.PID))
	}
	if _, err := l.KillPrimary(); err == nil {
		t.Error("killing the dead primary again did not fail")
	}
	ev, err := l.WaitFailover(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if ev.GetStep() != regentv1.FailoverStep_FAILOVER_STEP_COMPLETED || ev.GetFromNode() != "pg-us" || ev.GetToNode() == "pg-us" {
		t.Fatalf("failover %d: %v %s → %s (%s; notes %v)", ev.GetId(), ev.GetStep(), ev.GetFromNode(), ev.GetToNode(), ev.GetAbortReason(), ev.GetNotes())
	}
	p := l.Primary()
	if p == nil || p.Name != ev.GetToNode() {
		t.Fatalf("primary after failover %+v; event says %s", p, ev.GetToNode())
	}
	if rec, err := p.Server.IsInRecovery(ctx); err != nil || rec {
		t.Fatalf("new primary %s in recovery %v (%v)", p.Name, rec, err)
	}
	if err := p.Server.Exec(ctx, "INSERT INTO "+pgtest.LoadTable+" (payload) VALUES ('after failover')"); err != nil {
		t.Errorf("write on the new primary: %v", err)
	}
	if l.DNS != nil {
		if addrs, _, err := dnspub.Lookup(ctx, l.DNS.Addr(), Record); !ev.GetPublished() || err != nil || len(addrs) != 1 || addrs[0] != p.Server.Host {
			t.Errorf("DNS after failover: %v, %v (published %v: %s); want %s", addrs, err, ev.GetPublished(), ev.GetPublishError(), p.Server.Host)
		}
	}

	pids := append(l.PIDs(), killed.PID)
	if len(pids) < 3 {
		t.Fatalf("PIDs %v: want the two standbys' postmasters (and named)", pids)
	}
	dir := l.Dir
	if err := l.Stop(); err != nil {
		t.Errorf("stop: %v", err)
	}
	for _, pid := range pids {
		if !processGone(pid) {
			t.Errorf("process %d still runs after Stop", pid)
		}
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("temporary lab directory %s left behind", dir)
	}
}

func TestFullLabRestartReappliesTheCluster(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	l := startFull(t, ctx, dir)
	firstPort := l.Nodes[0].Server.Port
	first := l.Configs[0].GRPCAddr
	if l.Reapplied {
		t.Error("a fresh directory reported a re-applied cluster")
	}
	if err := l.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("the lab removed its given directory: %v", err)
	}
	l = startFull(t, ctx, dir)
	if !l.Reapplied || l.Configs[0].GRPCAddr != first {
		t.Errorf("restart: reapplied %v, w1 at %s (was %s)", l.Reapplied, l.Configs[0].GRPCAddr, first)
	}
	c, _ := l.cluster()
	for _, n := range c.GetNodes() {
		if n.GetName() == "pg-us" && int(n.GetPort()) != l.Nodes[0].Server.Port {
			t.Errorf("cluster still holds pg-us on port %d (old %d), the new one is on %d", n.GetPort(), firstPort, l.Nodes[0].Server.Port)
		}
	}
	if ok, why := l.Healthy(); !ok {
		t.Errorf("restarted lab not healthy: %s", why)
	}
}

// With keepers, KillPrimary loses the primary's whole host (keeper and postmaster), the
// failover fences by the lease, and Revive brings the host back: the old primary rejoins as a
// standby of the new one, and Stop leaves nothing running, the keeper-started server included.
func TestFullLabWithKeepersLosesAHostAndItRejoins(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	l := startWith(t, ctx, Options{Keepers: true})
	var desc bytes.Buffer
	l.Describe(&desc)
	for _, n := range l.Nodes {
		if n.Keeper == nil || !strings.Contains(desc.String(), n.KeeperConfig.ListenGRPC) {
			t.Fatalf("node %s: keeper %v, not described:\n%s", n.Name, n.Keeper, desc.String())
		}
	}
	c, _ := l.cluster()
	for _, n := range c.GetNodes() {
		if n.GetKeeperAddr() == "" {
			t.Fatalf("spec node %s has no keeper_addr", n.GetName())
		}
	}
	killed, err := l.KillPrimary()
	if err != nil {
		t.Fatal(err)
	}
	if !killed.Host || killed.Node.Name != "pg-us" || !processGone(killed.PID) {
		t.Fatalf("KillPrimary with keepers: %+v (gone %v)", killed, processGone(killed.PID))
	}
	if down := l.Down(); len(down) != 1 || down[0] != "pg-us" {
		t.Fatalf("Down() = %v, want [pg-us]", down)
	}
	ev, err := l.WaitFailover(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if ev.GetStep() != regentv1.FailoverStep_FAILOVER_STEP_COMPLETED || ev.GetFromNode() != "pg-us" {
		t.Fatalf("failover %d: %v %s → %s (%s; notes %v)", ev.GetId(), ev.GetStep(), ev.GetFromNode(), ev.GetToNode(), ev.GetAbortReason(), ev.GetNotes())
	}
	if ev.GetFenceMethod() != "lease" {
		t.Errorf("fence method %q: with the keeper dead only the lease can fence", ev.GetFenceMethod())
	}
	newPrimary := l.Primary()
	if err := l.Revive("pg-us"); err != nil {
		t.Fatal(err)
	}
	if err := l.Revive("pg-us"); err == nil {
		t.Error("reviving a host that is up did not fail")
	}
	old := l.Node("pg-us")
	msg, err := l.WaitRejoin(ctx, "pg-us")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(msg, "pg-us rejoined as a standby of "+newPrimary.Name) {
		t.Errorf("WaitRejoin: %q", msg)
	}
	err = poll(ctx, func() (bool, string) {
		var status, sender string
		if err := old.Server.QueryRow(ctx, "SELECT status, sender_host FROM pg_stat_wal_receiver").Scan(&status, &sender); err != nil {
			return false, err.Error()
		}
		return status == "streaming" && sender == newPrimary.Server.Host, "receiver " + status + " from " + sender
	}, "the old primary streaming from "+newPrimary.Name)
	if err != nil {
		t.Fatal(err)
	}
	if rec, err := old.Server.IsInRecovery(ctx); err != nil || !rec {
		t.Fatalf("revived old primary in recovery %v (%v)", rec, err)
	}
	pids := append(l.PIDs(), old.Server.PostmasterPID())
	if err := l.Stop(); err != nil {
		t.Errorf("stop: %v", err)
	}
	for _, pid := range pids {
		if pid != 0 && !processGone(pid) {
			t.Errorf("process %d still runs after Stop", pid)
		}
	}
}
