package gossip

import (
	"github.com/regentdb/regent/internal/poll"
	"testing"
	"time"

	"github.com/regentdb/regent/internal/freeport"
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
