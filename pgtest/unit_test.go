package pgtest_test

import (
	"context"
	"errors"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/regentdb/regent/pgtest"
)

func TestWaitFor(t *testing.T) {
	ctx := ctxT(t, time.Minute)
	calls := 0
	if err := pgtest.WaitFor(ctx, func(context.Context) (bool, error) {
		calls++
		return calls == 3, nil
	}); err != nil || calls != 3 {
		t.Fatalf("WaitFor = %v after %d calls; want nil after 3", err, calls)
	}

	boom := errors.New("boom")
	expired, cancel := context.WithTimeout(context.Background(), time.Nanosecond)
	defer cancel()
	<-expired.Done()
	err := pgtest.WaitFor(expired, func(context.Context) (bool, error) { return false, boom })
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, boom) {
		t.Fatalf("WaitFor on an expired context = %v; want both the deadline and the last error", err)
	}
}

func TestBlackHole(t *testing.T) {
	bh, err := pgtest.NewBlackHole()
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", bh.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte{0, 0, 0, 8, 4, 210, 22, 47}); err != nil { // an SSLRequest
		t.Fatal(err)
	}
	// Nothing ever comes back: the read can only end by its deadline.
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read from the black hole = %v; want a deadline error", err)
	}
	ctx := ctxT(t, time.Minute)
	if err := pgtest.WaitFor(ctx, func(context.Context) (bool, error) { return bh.Accepted() == 1, nil }); err != nil {
		t.Fatalf("Accepted = %d; want 1", bh.Accepted())
	}
	if err := bh.Close(); err != nil {
		t.Fatal(err)
	}
	if err := bh.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("connection still open after Close")
	}
	if _, err := net.Dial("tcp", bh.Addr()); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial after Close = %v; want connection refused", err)
	}
}
