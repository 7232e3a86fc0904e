package fsm

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/hashicorp/raft"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

func describe(evs []*regentv1.WatchEvent) string {
	var parts []string
	for _, ev := range evs {
		d := ""
		if ev.Deleted {
			d = "-"
		}
		parts = append(parts, fmt.Sprintf("%d:%s:%s%s", ev.Index, ev.Kind, ev.Key, d))
	}
	return strings.Join(parts, " ")
}

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestChangesSince(t *testing.T) {
	f := New()
	evs, complete, wait := f.ChangesSince(0)
	if !complete || len(evs) != 0 || closed(wait) {
		t.Fatalf("fresh FSM: %v complete=%v", evs, complete)
	}

	mustApply(t, f, applyCmd(testSpec("orders", "n1", "n1"))) // 1: cluster + audit
	mustApply(t, f, upsertCmd(testMember("w1", "id-1")))      // 2: member
	applyNext(t, f, deleteCmd("nope"))                        // 3: rejected
	mustApply(t, f, removeCmd("w1"))                          // 4: member deleted + audit
	mustApply(t, f, applyCmd(testSpec("orders", "n1", "n1"))) // 5: cluster + audit
	if !closed(wait) {
		t.Fatal("wait not closed by Apply")
	}

	tests := []struct {
		from     uint64
		complete bool
		want     string
	}{
		{0, true, "1:cluster:orders 1:audit:1 2:member:w1 4:member:w1- 4:audit:2 5:cluster:orders 5:audit:3"},
		{1, true, "2:member:w1 4:member:w1- 4:audit:2 5:cluster:orders 5:audit:3"},
		{2, true, "4:member:w1- 4:audit:2 5:cluster:orders 5:audit:3"},
		{3, true, "4:member:w1- 4:audit:2 5:cluster:orders 5:audit:3"},
		{5, true, ""},
		{99, true, ""},
	}
	for _, tt := range tests {
		evs, complete, wait := f.ChangesSince(tt.from)
		if got := describe(evs); got != tt.want || complete != tt.complete {
			t.Errorf("ChangesSince(%d) = %q complete=%v; want %q complete=%v", tt.from, got, complete, tt.want, tt.complete)
		}
		if closed(wait) {
			t.Errorf("ChangesSince(%d): wait already closed", tt.from)
		}
	}

	// Events carry the objects, and are copies.
	evs, _, _ = f.ChangesSince(4)
	if evs[0].Cluster.GetSpecVersion() != 2 || evs[1].Audit.GetAction() != "cluster.apply" {
		t.Fatalf("events lack their objects: %v", evs)
	}
	evs[0].Cluster.Primary = "mutated"
	again, _, _ := f.ChangesSince(4)
	if again[0].Cluster.Primary != "n1" {
		t.Fatal("ChangesSince returned shared events")
	}
	evs, _, _ = f.ChangesSince(3)
	if evs[0].Member.GetId() != "id-1" {
		t.Fatalf("a deleted member's event must carry its last value: %v", evs[0])
	}
}

func TestChangesSinceRingOverflow(t *testing.T) {
	f := New()
	// Index 1 makes two events (cluster, audit); indexes 2..RingSize each make one. The ring
	// then holds RingSize of RingSize+1 events and has dropped half of index 1.
	mustApply(t, f, applyCmd(testSpec("orders", "n1", "n1")))
	data := mustEncode(t, auditCmd("x", "y"))
	last := uint64(RingSize)
	for i := uint64(2); i <= last; i++ {
		f.Apply(&raft.Log{Index: i, Type: raft.LogCommand, Data: data})
	}
	if evs, complete, _ := f.ChangesSince(0); complete || len(evs) != RingSize || evs[0].Index != 1 || evs[0].Kind != KindAudit {
		t.Fatalf("ChangesSince(0): %d events from %d (%s), complete=%v", len(evs), evs[0].Index, evs[0].Kind, complete)
	}
	if evs, complete, _ := f.ChangesSince(1); !complete || len(evs) != RingSize-1 {
		t.Fatalf("ChangesSince(1): %d events, complete=%v; want %d, true", len(evs), complete, RingSize-1)
	}

	// Ten more entries drop indexes 1..10 entirely.
	for i := last + 1; i <= last+10; i++ {
		f.Apply(&raft.Log{Index: i, Type: raft.LogCommand, Data: data})
	}
	for _, tt := range []struct {
		from     uint64
		complete bool
		n        int
	}{
		{1, false, RingSize},
		{9, false, RingSize},
		{10, true, RingSize},
		{11, true, RingSize - 1},
		{last + 10 - 100, true, 100},
	} {
		evs, complete, _ := f.ChangesSince(tt.from)
		if complete != tt.complete || len(evs) != tt.n {
			t.Errorf("ChangesSince(%d): %d events, complete=%v; want %d, %v", tt.from, len(evs), complete, tt.n, tt.complete)
		}
		if len(evs) > 0 && (evs[0].Index <= tt.from || evs[len(evs)-1].Index != last+10) {
			t.Errorf("ChangesSince(%d): indexes %d..%d", tt.from, evs[0].Index, evs[len(evs)-1].Index)
		}
	}
}

func TestChangesSinceAfterRestore(t *testing.T) {
	f := base(t) // index 3
	_, _, wait := f.ChangesSince(3)
	if err := restoreBytes(f, snapshotBytes(t, failedOver(t))); err != nil { // index 50
		t.Fatal(err)
	}
	if !closed(wait) {
		t.Fatal("Restore did not close the wait channel")
	}
	for _, tt := range []struct {
		from     uint64
		complete bool
	}{{0, false}, {2, false}, {49, false}, {50, true}} {
		evs, complete, _ := f.ChangesSince(tt.from)
		if complete != tt.complete || len(evs) != 0 {
			t.Errorf("ChangesSince(%d) after restore: %v complete=%v; want none, %v", tt.from, evs, complete, tt.complete)
		}
	}
	mustApply(t, f, deleteCmd("billing"))
	if evs, complete, _ := f.ChangesSince(50); !complete || describe(evs) != "51:cluster:billing- 51:channel:2- 51:audit:1" {
		t.Fatalf("after restore + apply: %q complete=%v", describe(evs), complete)
	}
}

func TestWaitForIndex(t *testing.T) {
	f := New()
	done := make(chan error, 1)
	go func() { done <- f.WaitForIndex(context.Background(), 3) }()
	for i := 0; i < 2; i++ {
		mustApply(t, f, auditCmd("a", "b"))
	}
	select {
	case err := <-done:
		t.Fatalf("WaitForIndex(3) returned %v at index 2", err)
	default:
	}
	applyNext(t, f, deleteCmd("nope")) // a rejected entry still counts as applied
	if err := <-done; err != nil {
		t.Fatalf("WaitForIndex: %v", err)
	}
	if err := f.WaitForIndex(context.Background(), 1); err != nil {
		t.Fatalf("WaitForIndex of a past index: %v", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	go func() { done <- f.WaitForIndex(ctx, 100) }()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "waiting for index 100 (applied 3)") {
		t.Fatalf("WaitForIndex after cancel = %v", err)
	}

	// Restore can satisfy a wait too.
	go func() { done <- f.WaitForIndex(context.Background(), 40) }()
	if err := restoreBytes(f, snapshotBytes(t, failedOver(t))); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("WaitForIndex across Restore: %v", err)
	}
}
