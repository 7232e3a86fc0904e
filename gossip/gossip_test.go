package gossip

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/regentdb/regent/internal/freeport"
	"github.com/regentdb/regent/internal/poll"
)

func start(t *testing.T, name string) (*Gossip, string) {
	t.Helper()
	addr, err := freeport.Addr()
	if err != nil {
		t.Fatal(err)
	}
	g, err := New(Config{Name: name, BindAddr: addr, Fast: true, Meta: Meta{ID: "id-" + name, Region: "r-" + name, RaftAddr: "raft-" + name}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.Leave(time.Second) })
	return g, addr
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if !poll.Until(10*time.Second, 10*time.Millisecond, cond) {
		t.Fatalf("timed out waiting for %s", what)
	}
}

func TestJoinSpreadsMetadata(t *testing.T) {
	a, aAddr := start(t, "a")
	b, _ := start(t, "b")
	if n, err := b.Join([]string{aAddr}); err != nil || n != 1 {
		t.Fatalf("join: n=%d err=%v", n, err)
	}
	select {
	case <-a.Changed():
	case <-time.After(10 * time.Second):
		t.Fatal("no change signalled on a after b joined")
	}
	waitFor(t, "both peers on a", func() bool { return len(a.Peers()) == 2 })
	p := a.Peers()[1]
	if p.Name != "b" || p.Meta.ID != "id-b" || p.Meta.Region != "r-b" || p.Meta.RaftAddr != "raft-b" || p.State != "alive" || p.Meta.HasState {
		t.Errorf("a sees b as %+v", p)
	}
	if err := b.SetHasState(true); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "has_state to spread", func() bool {
		ps := a.Peers()
		return len(ps) == 2 && ps[1].Meta.HasState && ps[1].State == "alive"
	})
}

func TestJoinUnreachable(t *testing.T) {
	a, _ := start(t, "a")
	dead, err := freeport.Addr()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Join([]string{dead}); err == nil {
		t.Fatal("join of a dead address succeeded")
	}
}

func TestKeepersAreNotPeers(t *testing.T) {
	w, wAddr := start(t, "w1")
	kAddr, err := freeport.Addr()
	if err != nil {
		t.Fatal(err)
	}
	name := KeeperName("orders", "pg-us")
	k, err := New(Config{Name: name, BindAddr: kAddr, Fast: true,
		Meta: Meta{Role: RoleKeeper, Cluster: "orders", Node: "pg-us", GRPCAddr: "127.0.0.1:8009", HTTPAddr: "127.0.0.1:8008"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k.Join([]string{wAddr}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the keeper alive on the witness", func() bool {
		ks := w.Keepers()
		return len(ks) == 1 && ks[0].State == "alive"
	})
	got := w.Keepers()[0]
	if got.Name != name || got.Meta.Cluster != "orders" || got.Meta.Node != "pg-us" || got.Meta.GRPCAddr != "127.0.0.1:8009" ||
		got.Meta.HTTPAddr != "127.0.0.1:8008" || got.Addr != kAddr || got.Since.IsZero() || !got.Meta.IsKeeper() {
		t.Errorf("witness sees the keeper as %+v", got)
	}
	if ps := w.Peers(); len(ps) != 1 || ps[0].Name != "w1" {
		t.Errorf("witness peers = %+v, want only itself", ps)
	}
	// The keeper sees the witness as a peer and itself as a keeper.
	waitFor(t, "the witness on the keeper", func() bool { return len(k.Peers()) == 1 && len(k.Keepers()) == 1 })

	// Stopped without leaving (a lost host): the witness declares it dead, not left.
	since := got.Since
	if err := k.Shutdown(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the keeper dead on the witness", func() bool {
		ks := w.Keepers()
		return len(ks) == 1 && ks[0].State == "dead"
	})
	if ks := w.Keepers(); !ks[0].Since.After(since) {
		t.Errorf("since did not move with the state: %v, was %v", ks[0].Since, since)
	}
	if ps := w.Peers(); len(ps) != 1 {
		t.Errorf("witness peers after the keeper died = %+v", ps)
	}
}

func TestKeeperLeaves(t *testing.T) {
	w, wAddr := start(t, "w1")
	kAddr, err := freeport.Addr()
	if err != nil {
		t.Fatal(err)
	}
	k, err := New(Config{Name: KeeperName("orders", "pg-eu"), BindAddr: kAddr, Fast: true,
		Meta: Meta{Role: RoleKeeper, Cluster: "orders", Node: "pg-eu"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k.Join([]string{wAddr}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the keeper alive", func() bool { ks := w.Keepers(); return len(ks) == 1 && ks[0].State == "alive" })
	if err := k.Leave(time.Second); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the keeper left", func() bool { ks := w.Keepers(); return len(ks) == 1 && ks[0].State == "left" })
}

func TestMetaLimits(t *testing.T) {
	addr, err := freeport.Addr()
	if err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("x", MaxMetaSize)
	_, err = New(Config{Name: "k", BindAddr: addr, Fast: true, Meta: Meta{Role: RoleKeeper, Cluster: long}})
	if !errors.Is(err, ErrMetaTooLarge) || !strings.Contains(err.Error(), "512") {
		t.Errorf("oversized metadata: err = %v, want ErrMetaTooLarge naming the limit", err)
	}
	if _, err := New(Config{Name: "k", BindAddr: addr, Fast: true, Meta: Meta{Role: "observer"}}); err == nil {
		t.Error("an unknown role was accepted")
	}
	// The largest keeper metadata the keeper's configuration allows fits.
	name63 := strings.Repeat("n", 63)
	host := "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"
	b, _ := json.Marshal(Meta{Role: RoleKeeper, Cluster: name63, Node: name63, GRPCAddr: host, HTTPAddr: host})
	if len(b) > MaxMetaSize {
		t.Errorf("a keeper's metadata with 63-character names and IPv6 addresses takes %d bytes", len(b))
	}
}
