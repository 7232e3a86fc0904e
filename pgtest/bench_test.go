package pgtest_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/regentdb/regent/pgtest"
)

func ctxT(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestBench(t *testing.T) {
	b := pgtest.Start(t, pgtest.Options{Standbys: 2})
	ctx := ctxT(t, 2*time.Minute)
	p := b.Primary
	s1, s2 := b.Standbys[0], b.Standbys[1]

	t.Run("roles", func(t *testing.T) {
		rec, err := p.IsInRecovery(ctx)
		if err != nil || rec {
			t.Fatalf("primary IsInRecovery = %v, %v; want false", rec, err)
		}
		for _, s := range b.Standbys {
			rec, err := s.IsInRecovery(ctx)
			if err != nil || !rec {
				t.Fatalf("%s IsInRecovery = %v, %v; want true", s, rec, err)
			}
			if st, err := s.WalReceiverStatus(ctx); err != nil || st != "streaming" {
				t.Fatalf("%s WAL receiver = %q, %v; want streaming", s, st, err)
			}
		}
		// Every standby uses its own slot on the primary, and the primary
		// sees it under its name.
		var n int
		if err := p.QueryRow(ctx, `SELECT count(*) FROM pg_stat_replication r
			JOIN pg_replication_slots s ON s.active_pid = r.pid
			WHERE r.application_name IN ('standby1','standby2') AND s.slot_name IN ('standby1_slot','standby2_slot')`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 2 {
			t.Fatalf("primary sees %d standbys streaming through their slots, want 2", n)
		}
	})

	t.Run("query", func(t *testing.T) {
		rows, err := p.Query(ctx, "SELECT i, 'r' || i FROM generate_series(1, 3) AS i")
		if err != nil {
			t.Fatal(err)
		}
		if len(rows) != 3 || rows[2][0] != int32(3) || rows[2][1] != "r3" {
			t.Fatalf("Query rows = %v", rows)
		}
		if _, err := p.Query(ctx, "SELECT nosuchcolumn"); err == nil {
			t.Fatal("a bad query succeeded")
		}
	})

	t.Run("same system identifier", func(t *testing.T) {
		want, err := p.SystemIdentifier(ctx)
		if err != nil || want == 0 {
			t.Fatalf("primary system identifier = %d, %v", want, err)
		}
		for _, s := range b.Standbys {
			if got, err := s.SystemIdentifier(ctx); err != nil || got != want {
				t.Fatalf("%s system identifier = %d, %v; want %d", s, got, err, want)
			}
		}
	})

	t.Run("write load replicates", func(t *testing.T) {
		load, err := p.WriteLoad(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := load.WaitAcked(ctx, 50); err != nil {
			t.Fatal(err)
		}
		st := load.Stop()
		if st.Acked < 50 || st.Failed != 0 {
			t.Fatalf("load stats %+v; want >= 50 acked, none failed", st)
		}
		acked := load.Acked()
		for _, s := range b.Standbys {
			if err := s.WaitCaughtUp(ctx, p); err != nil {
				t.Fatal(err)
			}
			missing, err := s.MissingRows(ctx, acked)
			if err != nil || len(missing) != 0 {
				t.Fatalf("%s misses %d acknowledged rows (%v)", s, len(missing), err)
			}
		}
		missing, err := s1.MissingRows(ctx, []int64{acked[len(acked)-1] + 1000})
		if err != nil || len(missing) != 1 {
			t.Fatalf("MissingRows of a row never written = %v, %v; want it reported", missing, err)
		}
	})

	t.Run("pause replay", func(t *testing.T) {
		if err := s1.PauseReplay(ctx); err != nil {
			t.Fatal(err)
		}
		if err := s1.WaitReplayPaused(ctx); err != nil {
			t.Fatal(err)
		}
		before, err := s1.LSNs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Exec(ctx, "CREATE TABLE paused_t (i int); INSERT INTO paused_t VALUES (1)"); err != nil {
			t.Fatal(err)
		}
		pl, err := p.LSNs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// WAL still arrives while replay stays put.
		if err := pgtest.WaitFor(ctx, func(ctx context.Context) (bool, error) {
			l, err := s1.LSNs(ctx)
			return err == nil && l.Received >= pl.Current, err
		}); err != nil {
			t.Fatal(err)
		}
		after, err := s1.LSNs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if after.Replayed != before.Replayed {
			t.Fatalf("replay moved from %X to %X while paused", before.Replayed, after.Replayed)
		}
		if err := s1.ResumeReplay(ctx); err != nil {
			t.Fatal(err)
		}
		if err := s1.WaitReplayed(ctx, pl.Current); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("kill9 and restart", func(t *testing.T) {
		pid := s2.PID()
		if pid == 0 {
			t.Fatal("standby2 has no pid")
		}
		if err := s2.Kill9(); err != nil {
			t.Fatal(err)
		}
		if s2.PID() != 0 || s2.Running() {
			t.Fatalf("PID after Kill9 = %d; want 0", s2.PID())
		}
		_, err := net.Dial("tcp", net.JoinHostPort(s2.Host, strconv.Itoa(s2.Port)))
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("dialing a killed server: %v; want connection refused", err)
		}
		if err := s2.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if s2.PID() == 0 || s2.PID() == pid {
			t.Fatalf("PID after restart = %d (before %d)", s2.PID(), pid)
		}
		if err := s2.WaitStreaming(ctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("stop and start", func(t *testing.T) {
		if err := s2.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		if s2.Running() {
			t.Fatal("running after Stop")
		}
		if err := s2.Stop(ctx); err != nil {
			t.Fatalf("second Stop: %v", err)
		}
		if err := s2.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if err := s2.Start(ctx); err != nil {
			t.Fatalf("second Start: %v", err)
		}
		if err := s2.WaitStreaming(ctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("another cluster", func(t *testing.T) {
		other, err := b.NewPrimary(ctx, "other")
		if err != nil {
			t.Fatal(err)
		}
		a, err := p.SystemIdentifier(ctx)
		if err != nil {
			t.Fatal(err)
		}
		o, err := other.SystemIdentifier(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if a == o {
			t.Fatalf("NewPrimary has the bench's system identifier %d", a)
		}
		if _, err := b.NewPrimary(ctx, "other"); err == nil {
			t.Fatal("a second server called other was accepted")
		}
		if err := other.Stop(ctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("promote", func(t *testing.T) {
		tl, err := s2.Timeline(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s2.Promote(ctx); err != nil {
			t.Fatal(err)
		}
		rec, err := s2.IsInRecovery(ctx)
		if err != nil || rec {
			t.Fatalf("after Promote IsInRecovery = %v, %v", rec, err)
		}
		if err := s2.Exec(ctx, "CREATE TABLE after_promote (i int)"); err != nil {
			t.Fatalf("promoted standby refuses writes: %v", err)
		}
		ntl, err := s2.Timeline(ctx)
		if err != nil || ntl != tl+1 {
			t.Fatalf("timeline after promotion = %d, %v; want %d", ntl, err, tl+1)
		}
		if err := s2.Promote(ctx); err != nil {
			t.Fatalf("promoting a primary again: %v", err)
		}
		// A cascading clone of the promoted server follows its timeline.
		s3, err := b.AddStandbyFrom(ctx, "standby3", s2)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := s3.Timeline(ctx); err != nil || got != ntl {
			t.Fatalf("standby3 timeline = %d, %v; want %d", got, err, ntl)
		}
	})

	t.Run("run program", func(t *testing.T) {
		out, err := b.Run(ctx, "pg_controldata", p.DataDir)
		if err != nil {
			t.Fatal(err)
		}
		if len(out) == 0 {
			t.Fatal("pg_controldata printed nothing")
		}
	})
}

func TestCloseLeavesNothing(t *testing.T) {
	pgtest.RequirePostgres(t)
	ctx := ctxT(t, 2*time.Minute)
	b, err := pgtest.New(ctx, pgtest.Options{Standbys: 1})
	if err != nil {
		t.Fatal(err)
	}
	pids := []int{b.Primary.PID(), b.Standbys[0].PID()}
	dir := b.Dir
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("bench dir %s: %v, %v; want mode 0755", dir, fi, err)
	}
	// A crashed primary must not stop Close.
	if err := b.Primary.Kill9(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("process %d survived Close", pid)
		}
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("bench dir %s survived Close: %v", dir, err)
	}
}

// A postmaster started on a bench server's data directory by someone else (a keeper's pg_ctl
// after pgtest's own died) is shut down by Close too, not left running or only killed late.
func TestCloseStopsAForeignPostmaster(t *testing.T) {
	pgtest.RequirePostgres(t)
	ctx := ctxT(t, 2*time.Minute)
	b, err := pgtest.New(ctx, pgtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s := b.Primary
	if err := s.Kill9(); err != nil {
		t.Fatal(err)
	}
	opts := fmt.Sprintf("-p %d -c listen_addresses=%s -c unix_socket_directories=%s -c cluster_name=%s", s.Port, s.Host, s.Dir, s.Name)
	startForeign := func() int {
		t.Helper()
		if out, err := b.Run(ctx, "pg_ctl", "start", "-w", "-D", s.DataDir, "-l", filepath.Join(s.Dir, "foreign.log"), "-o", opts); err != nil {
			t.Fatalf("pg_ctl start: %v: %s", err, out)
		}
		pidFile, err := os.ReadFile(filepath.Join(s.DataDir, "postmaster.pid"))
		if err != nil {
			t.Fatal(err)
		}
		first, _, _ := strings.Cut(string(pidFile), "\n")
		pid, err := strconv.Atoi(strings.TrimSpace(first))
		if err != nil || !alive(pid) {
			t.Fatalf("foreign postmaster pid %q (%v) not running", first, err)
		}
		if s.Running() {
			t.Fatal("pgtest claims the foreign postmaster as its own")
		}
		if got := s.PostmasterPID(); got != pid {
			t.Fatalf("PostmasterPID() = %d, want the foreign postmaster %d", got, pid)
		}
		return pid
	}
	// Kill9 reaches a foreign postmaster too.
	pid := startForeign()
	if err := s.Kill9(); err != nil {
		t.Fatalf("Kill9 of a foreign postmaster: %v", err)
	}
	if alive(pid) || s.PostmasterPID() != 0 {
		t.Fatalf("foreign postmaster %d survived Kill9 (PostmasterPID %d)", pid, s.PostmasterPID())
	}
	pid = startForeign()
	if err := b.Close(); err != nil {
		t.Fatalf("Close with a foreign postmaster: %v", err)
	}
	if alive(pid) {
		t.Errorf("foreign postmaster %d survived Close", pid)
	}
}

// alive reports whether pid is a live process (not a zombie).
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return syscall.Kill(pid, 0) == nil
	}
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] == ')' {
			return i+2 < len(b) && b[i+2] != 'Z' && b[i+2] != 'X'
		}
	}
	return true
}

func TestPasswordAuth(t *testing.T) {
	b := pgtest.Start(t, pgtest.Options{PasswordAuth: true, Password: "s3cret 'quoted'"})
	ctx := ctxT(t, time.Minute)
	if err := b.Primary.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("connecting with the right password: %v", err)
	}
	dsn := "host=127.0.0.1 port=" + strconv.Itoa(b.Primary.Port) + " user=regent dbname=postgres sslmode=disable password=wrong"
	if err := pingDSN(ctx, dsn); err == nil {
		t.Fatal("a wrong password was accepted")
	}
}
