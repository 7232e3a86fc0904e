package pgops

import (
	"context"
	"errors"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/regentdb/regent/pgtest"
)

// secretPW is put in standby2's primary_conninfo; it must never appear in an error. (Standbys
// replicate as the bootstrap user over trust, so the server ignores it.)
const secretPW = "secret-pw-7f3a"

func target(b *pgtest.Bench, s *pgtest.Server) Target {
	return Target{Host: s.Host, Port: uint16(s.Port), User: pgtest.SuperUser, Database: "postgres",
		Password: b.Password(), SSLMode: "disable", Node: s.Name, Cluster: "orders"}
}

func conninfoOf(t *testing.T, ctx context.Context, s *pgtest.Server) Conninfo {
	t.Helper()
	var v string
	if err := s.QueryRow(ctx, "SHOW primary_conninfo").Scan(&v); err != nil {
		t.Fatal(err)
	}
	c, err := ParseConninfo(v)
	if err != nil {
		t.Fatalf("primary_conninfo of %s: %v", s.Name, err)
	}
	return c
}

// setConninfo sets primary_conninfo on s and waits until a new session sees it.
func setConninfo(t *testing.T, ctx context.Context, s *pgtest.Server, v string) {
	t.Helper()
	c, err := s.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	var stmt string
	if err := c.QueryRow(ctx, "SELECT format('ALTER SYSTEM SET primary_conninfo = %L', $1::text)", v).Scan(&stmt); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, stmt); err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if err := pgtest.WaitFor(ctx, func(ctx context.Context) (bool, error) {
		var got string
		err := s.QueryRow(ctx, "SHOW primary_conninfo").Scan(&got)
		return got == v, err
	}); err != nil {
		t.Fatalf("primary_conninfo on %s not reloaded: %v", s.Name, err)
	}
}

func noSecret(t *testing.T, err error) {
	t.Helper()
	if err != nil && strings.Contains(err.Error(), secretPW) {
		t.Errorf("error leaks primary_conninfo's password: %q", err)
	}
}

func TestFailoverSteps(t *testing.T) {
	b := pgtest.Start(t, pgtest.Options{Standbys: 2, PasswordAuth: true})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	primary, s1, s2 := b.Primary, b.Standbys[0], b.Standbys[1]
	tp, t1, t2 := target(b, primary), target(b, s1), target(b, s2)

	// standby2's conninfo gets a password and an application_name, which Repoint must keep.
	orig := conninfoOf(t, ctx, s2)
	withPW := orig
	withPW.Set("password", secretPW)
	withPW.Set("application_name", "standby2 app")
	setConninfo(t, ctx, s2, withPW.Encode())
	if err := s2.WaitStreaming(ctx); err != nil {
		t.Fatal(err)
	}

	t.Run("repoint refuses a primary", func(t *testing.T) {
		if err := Repoint(ctx, tp, s1.Host, uint16(s1.Port)); !errors.Is(err, ErrNotStandby) {
			t.Errorf("Repoint of the primary: %v, want ErrNotStandby", err)
		}
	})

	t.Run("repoint to an unreachable primary changes nothing and leaks nothing", func(t *testing.T) {
		bh := pgtest.StartBlackHole(t)
		rctx, rcancel := context.WithTimeout(ctx, time.Second)
		defer rcancel()
		// standby2 has primary_slot_name, so Repoint must create the slot on the new primary first.
		err := Repoint(rctx, t2, bh.Host(), uint16(bh.Port()))
		if err == nil {
			t.Fatal("Repoint to a server that never answers succeeded")
		}
		t.Logf("error: %v", err)
		noSecret(t, err)
		if !strings.Contains(err.Error(), "replication slot") {
			t.Errorf("error does not say what failed: %v", err)
		}
		if got := conninfoOf(t, ctx, s2); got.Encode() != withPW.Encode() {
			t.Errorf("primary_conninfo changed by a failed Repoint: %s", got)
		}
	})

	t.Run("unparseable conninfo leaks nothing", func(t *testing.T) {
		setConninfo(t, ctx, s2, "host=127.0.0.1 password='"+secretPW)
		err := Repoint(ctx, t2, s1.Host, uint16(s1.Port))
		if !errors.Is(err, ErrConninfoSyntax) {
			t.Errorf("Repoint with a broken primary_conninfo: %v, want a syntax error", err)
		}
		t.Logf("error: %v", err)
		noSecret(t, err)
		setConninfo(t, ctx, s2, withPW.Encode())
		if err := s2.WaitStreaming(ctx); err != nil {
			t.Fatal(err)
		}
	})

	// standby1 was fenced once (say by an aborted switchover): Promote must undo that.
	if err := s1.Exec(ctx, "ALTER SYSTEM SET default_transaction_read_only = on"); err != nil {
		t.Fatal(err)
	}
	if err := s1.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*pgtest.Server{s1, s2} {
		if err := s.WaitCaughtUp(ctx, primary); err != nil {
			t.Fatal(err)
		}
	}
	if err := primary.Kill9(); err != nil {
		t.Fatal(err)
	}

	var first PromoteResult
	t.Run("promote", func(t *testing.T) {
		var err error
		first, err = Promote(ctx, t1)
		if err != nil {
			t.Fatalf("Promote: %v", err)
		}
		if first.AlreadyPrimary || first.Timeline != 2 || first.LSN == 0 {
			t.Errorf("Promote = %+v, want a promotion to timeline 2", first)
		}
		if rec, err := s1.IsInRecovery(ctx); err != nil || rec {
			t.Errorf("standby1 in recovery %v (%v) after Promote", rec, err)
		}
		if err := s1.Exec(ctx, "CREATE TABLE after_failover (id int PRIMARY KEY)"); err != nil {
			t.Errorf("plain write on the promoted node: %v", err)
		}
		var n int
		if err := s1.QueryRow(ctx, "SELECT count(*) FROM regent.promotions WHERE node = 'standby1' AND timeline = 2").Scan(&n); err != nil || n != 1 {
			t.Errorf("promotion rows %d (%v), want 1", n, err)
		}
	})

	t.Run("promote again is a no-op", func(t *testing.T) {
		again, err := Promote(ctx, t1)
		if err != nil {
			t.Fatalf("second Promote: %v", err)
		}
		if !again.AlreadyPrimary || again.Timeline != 2 || again.LSN < first.LSN {
			t.Errorf("second Promote = %+v (first %+v)", again, first)
		}
	})

	t.Run("repoint", func(t *testing.T) {
		slot := pgtest.SlotName(s2.Name)
		var n int
		if err := s1.QueryRow(ctx, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&n); err != nil || n != 0 {
			t.Fatalf("slot %s on standby1 before Repoint: %d (%v)", slot, n, err)
		}
		if err := Repoint(ctx, t2, s1.Host, uint16(s1.Port)); err != nil {
			noSecret(t, err)
			t.Fatalf("Repoint: %v", err)
		}
		if err := s1.QueryRow(ctx, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1 AND slot_type = 'physical'", slot).Scan(&n); err != nil || n != 1 {
			t.Errorf("slot %s on the new primary: %d (%v), want it created", slot, n, err)
		}
		// Only host and port changed; everything else kept, in order.
		got := conninfoOf(t, ctx, s2)
		want := withPW
		want.Set("host", s1.Host)
		want.Set("port", strconv.Itoa(s1.Port))
		if !reflect.DeepEqual(got.Params(), want.Params()) {
			t.Errorf("primary_conninfo after Repoint:\n got %s\nwant %s", got, want)
		}
		if err := WaitStreamingFrom(ctx, t2, "localhost", uint16(s1.Port)); err != nil {
			t.Fatalf("WaitStreamingFrom(localhost): %v", err)
		}
		if err := WaitStreamingFrom(ctx, t2, s1.Host, uint16(s1.Port)); err != nil {
			t.Fatalf("WaitStreamingFrom(%s): %v", s1.Host, err)
		}
		if err := pgtest.WaitFor(ctx, func(ctx context.Context) (bool, error) {
			var active bool
			err := s1.QueryRow(ctx, "SELECT active FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&active)
			return active, err
		}); err != nil {
			t.Errorf("standby2 does not use its slot on the new primary: %v", err)
		}
	})

	t.Run("writes on the new primary reach the repointed standby", func(t *testing.T) {
		if err := s1.Exec(ctx, "INSERT INTO after_failover VALUES (42)"); err != nil {
			t.Fatal(err)
		}
		if err := pgtest.WaitFor(ctx, func(ctx context.Context) (bool, error) {
			var n int
			err := s2.QueryRow(ctx, "SELECT count(*) FROM after_failover WHERE id = 42").Scan(&n)
			return n == 1, err
		}); err != nil {
			t.Fatalf("row written on standby1 never reached standby2: %v", err)
		}
		if tl, err := s2.Timeline(ctx); err != nil || tl != 2 {
			t.Errorf("standby2 timeline %d (%v), want 2", tl, err)
		}
	})

	t.Run("repoint again is a no-op", func(t *testing.T) {
		if err := Repoint(ctx, t2, s1.Host, uint16(s1.Port)); err != nil {
			t.Fatalf("second Repoint: %v", err)
		}
		if err := WaitStreamingFrom(ctx, t2, s1.Host, uint16(s1.Port)); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("wait streaming from the wrong upstream times out", func(t *testing.T) {
		wctx, wcancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer wcancel()
		err := WaitStreamingFrom(wctx, t2, primary.Host, uint16(primary.Port))
		if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "streaming from "+s1.Host+":"+strconv.Itoa(s1.Port)) {
			t.Errorf("WaitStreamingFrom(old primary) = %v, want a timeout saying where it streams from", err)
		}
		t.Logf("error: %v", err)
		if err := WaitStreamingFrom(ctx, t1, s1.Host, uint16(s1.Port)); !errors.Is(err, ErrNotStandby) {
			t.Errorf("WaitStreamingFrom on a primary = %v, want ErrNotStandby", err)
		}
	})
}
