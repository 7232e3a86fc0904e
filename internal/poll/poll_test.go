package poll

import (
	"sync/atomic"
	"testing"
	"time"
)

func TestUntil(t *testing.T) {
	var n atomic.Int32
	if !Until(5*time.Second, time.Millisecond, func() bool { return n.Add(1) >= 3 }) {
		t.Fatal("condition that comes true was not seen")
	}
	if n.Load() != 3 {
		t.Errorf("checked %d times, want 3", n.Load())
	}
	if Until(20*time.Millisecond, time.Millisecond, func() bool { return false }) {
		t.Fatal("a condition that never holds reported true")
	}
}
