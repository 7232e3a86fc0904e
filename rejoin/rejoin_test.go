package rejoin

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/regentdb/regent/heartbeat"
	"github.com/regentdb/regent/internal/pglsn"
	"github.com/regentdb/regent/pgconnect"
	"github.com/regentdb/regent/pgops"
	"github.com/regentdb/regent/pgtest"
)

// benchPassword has a quote, a backslash, a colon and a space: each needs escaping somewhere
// (conninfo, postgresql.auto.conf, the password file).
const benchPassword = `p'w\:x y`

const lostRows = 25

func target(b *pgtest.Bench, s *pgtest.Server) pgconnect.Target {
	return pgconnect.Target{Host: s.Host, Port: uint16(s.Port), User: pgtest.SuperUser, Password: b.Password(),
		SSLMode: "disable", Node: s.Name, Cluster: "orders"}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tlogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tlogWriter struct{ t *testing.T }

func (w tlogWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// failover builds the scene every test starts from: a table on the primary and its standby;
// the standby stopped; lostRows rows committed on the primary, one per transaction; the primary
// killed with SIGKILL; the standby started and promoted. It returns the ids of the rows (which
// the new primary never received), the end of what the promoted standby replayed on the old
// timeline, and the primary's flushed WAL position after its last commit.
func failover(t *testing.T, ctx context.Context, b *pgtest.Bench) (ids []int64, replayed, flushed uint64) {
	t.Helper()
	return failoverWith(t, ctx, b, nil)
}

// failoverWith is failover with more work on the old primary after the lost rows (on the same
// connection, before the kill): more commits the failover loses.
func failoverWith(t *testing.T, ctx context.Context, b *pgtest.Bench, more func(*pgx.Conn)) (ids []int64, replayed, flushed uint64) {
	t.Helper()
	old, s1 := b.Primary, b.Standbys[0]
	if err := old.Exec(ctx, `CREATE TABLE `+pgtest.LoadTable+` (id bigserial PRIMARY KEY,
		at timestamptz NOT NULL DEFAULT clock_timestamp(), payload text)`); err != nil {
		t.Fatal(err)
	}
	if err := s1.WaitCaughtUp(ctx, old); err != nil {
		t.Fatal(err)
	}
	if err := s1.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	c, err := old.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < lostRows; i++ {
		var id int64
		// Autocommit: one transaction, so one COMMIT record, per row.
		if err := c.QueryRow(ctx, `INSERT INTO `+pgtest.LoadTable+` (payload) VALUES (repeat('x', 300)) RETURNING id`).Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if more != nil {
		more(c)
	}
	var lsn string
	if err := c.QueryRow(ctx, "SELECT pg_current_wal_flush_lsn()::text").Scan(&lsn); err != nil {
		t.Fatal(err)
	}
	c.Close(context.Background())
	if flushed, err = pglsn.Parse(lsn); err != nil {
		t.Fatal(err)
	}
	if err := old.Kill9(); err != nil {
		t.Fatal(err)
	}
	if err := s1.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s1.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	// After promotion pg_last_wal_replay_lsn() stays at the end of the last record recovery
	// replayed: where the old timeline ends in the new primary's history.
	l, err := s1.LSNs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return ids, l.Replayed, flushed
}

// guardClosed dials addr until stop is called and fails the test if a connection is ever
// accepted: the old primary must not listen while it is rewound.
func guardClosed(t *testing.T, addr string) (stop func() int) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	dials := 0
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
			mu.Lock()
			dials++
			mu.Unlock()
			if err == nil {
				c.Close()
				t.Errorf("%s accepted a connection while it was being rewound", addr)
			} else if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("dialling %s: %v, want connection refused", addr, err)
			}
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	return func() int {
		close(done)
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return dials
	}
}

// checkRecordEnds checks the page arithmetic behind FinalLSN against PostgreSQL's own WAL:
// for every record pg_waldump reads in pg_wal, the computed end is where the next record starts.
func checkRecordEnds(t *testing.T, ctx context.Context, l Local) {
	t.Helper()
	u, err := l.resolveUser()
	if err != nil {
		t.Fatal(err)
	}
	cd, err := u.controlData(ctx, l)
	if err != nil {
		t.Fatal(err)
	}
	w := cd.layout()
	walDir := filepath.Join(l.DataDir, "pg_wal")
	segs, err := listSegments(walDir, w.segSize)
	if err != nil {
		t.Fatal(err)
	}
	var first *segFile
	for i, s := range segs {
		if s.tli == cd.Timeline && plausibleSegment(filepath.Join(walDir, s.name), s, w.segSize) && (first == nil || s.segno < first.segno) {
			first = &segs[i]
		}
	}
	if first == nil {
		t.Fatal("no WAL segment found")
	}
	var recs []walRecord
	_, _, startErr := u.scanLines(ctx, l, u.childEnv(), func(line []byte) {
		if bytes.HasPrefix(line, []byte("rmgr: ")) {
			r, err := parseRecord(line)
			if err != nil {
				t.Error(err)
				return
			}
			recs = append(recs, r)
		}
	}, "pg_waldump", "--path="+walDir, fmt.Sprintf("--timeline=%d", cd.Timeline), "--start="+pglsn.Format(first.segno*w.segSize))
	if startErr != nil {
		t.Fatal(startErr)
	}
	crossing, switches := 0, 0
	for i := 0; i+1 < len(recs); i++ {
		r := recs[i]
		end := w.end(r)
		if got, want := w.nextRecordStart(end), recs[i+1].lsn; got != want {
			t.Fatalf("record at %s (%s, %d bytes): computed end %s, but the next record starts at %s", pglsn.Format(r.lsn), r.rmgr, r.totLen, pglsn.Format(end), pglsn.Format(want))
		}
		if r.lsn/w.blockSize != (r.lsn+r.totLen-1)/w.blockSize {
			crossing++
		}
		if r.rmgr == "XLOG" && strings.HasPrefix(r.desc, "SWITCH") {
			switches++
		}
	}
	t.Logf("checked the end of %d WAL records: %d cross a page boundary, %d are WAL switches", len(recs), crossing, switches)
	if len(recs) < 100 || crossing == 0 {
		t.Errorf("the WAL checked is too small to mean anything (%d records, %d crossing pages)", len(recs), crossing)
	}
}

func TestRejoinAfterFailover(t *testing.T) {
	b := pgtest.Start(t, pgtest.Options{Standbys: 1, PasswordAuth: true, Password: benchPassword,
		// No autovacuum: the only transactions committed after the standby stops are the test's.
		Settings: map[string]string{"autovacuum": "off"}})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	old, s1 := b.Primary, b.Standbys[0]
	local := Local{BinDir: b.BinDir(), DataDir: old.DataDir}
	oldT, newT := target(b, old), target(b, s1)

	t.Run("refused while running", func(t *testing.T) {
		if _, err := Rewind(ctx, local, newT, RewindOptions{}); !errors.Is(err, ErrRunning) {
			t.Errorf("Rewind of a running server: %v, want ErrRunning", err)
		}
		if err := ConfigureStandby(local, ConninfoFor(newT, ""), ""); !errors.Is(err, ErrRunning) {
			t.Errorf("ConfigureStandby of a running server: %v, want ErrRunning", err)
		}
		if _, _, err := FinalLSN(ctx, local); !errors.Is(err, ErrRunning) {
			t.Errorf("FinalLSN of a running server: %v, want ErrRunning", err)
		}
		if _, err := Measure(ctx, local, newT); !errors.Is(err, ErrRunning) {
			t.Errorf("Measure of a running server: %v, want ErrRunning", err)
		}
	})

	ids, replayed, flushed := failover(t, ctx, b)

	final, tli, err := FinalLSN(ctx, local)
	if err != nil {
		t.Fatal(err)
	}
	fork, err := ForkPoint(ctx, newT, tli)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("old primary: final LSN %s on timeline %d (flushed %s before the kill); fork point %s (the standby had replayed %s)",
		pglsn.Format(final), tli, pglsn.Format(flushed), pglsn.Format(fork), pglsn.Format(replayed))
	if tli != 1 {
		t.Errorf("old primary's timeline = %d, want 1", tli)
	}
	if fork != replayed {
		t.Errorf("fork point %s, but the promoted standby had replayed up to %s", pglsn.Format(fork), pglsn.Format(replayed))
	}
	if final <= fork {
		t.Errorf("final LSN %s is not after the fork point %s", pglsn.Format(final), pglsn.Format(fork))
	}
	if final < flushed {
		t.Errorf("final LSN %s is before the position %s flushed after the last commit", pglsn.Format(final), pglsn.Format(flushed))
	}
	if got, want := DataLossBytes(final, fork), int64(final-fork); got != want {
		t.Errorf("DataLossBytes = %d, want %d", got, want)
	}
	n, err := LostTransactions(ctx, local, fork, final, tli)
	if err != nil {
		t.Fatal(err)
	}
	if n != lostRows {
		t.Errorf("LostTransactions = %d, want %d (one per row committed after the standby stopped)", n, lostRows)
	}
	// WAL from before the oldest segment left in pg_wal cannot be counted.
	if _, err := LostTransactions(ctx, local, 0x100, final, tli); !errors.Is(err, ErrWALMissing) {
		t.Errorf("LostTransactions from a removed segment: %v, want ErrWALMissing", err)
	}
	if _, err := ForkPoint(ctx, newT, 2); !errors.Is(err, ErrSameTimeline) {
		t.Errorf("ForkPoint for the new primary's own timeline: %v, want ErrSameTimeline", err)
	}

	loss, err := Measure(ctx, local, newT)
	if err != nil {
		t.Fatal(err)
	}
	if loss.FinalLSN != final || loss.Timeline != tli || loss.ForkLSN != fork || loss.NewTimeline != 2 ||
		loss.Bytes != int64(final-fork) || loss.Transactions != lostRows || loss.WAL.Commits != lostRows ||
		loss.WAL.CommitsPrepared != 0 || loss.WAL.Aborts != 0 {
		t.Errorf("Measure = %+v, want final %s, fork %s, %d transactions", loss, pglsn.Format(final), pglsn.Format(fork), lostRows)
	}
	if loss.WAL.FirstCommit.IsZero() || loss.WAL.LastCommit.Before(loss.WAL.FirstCommit) || time.Since(loss.WAL.LastCommit) > 10*time.Minute {
		t.Errorf("commit times %v .. %v are implausible", loss.WAL.FirstCommit, loss.WAL.LastCommit)
	}

	t.Run("record ends", func(t *testing.T) { checkRecordEnds(t, ctx, local) })

	if err := CreateSlot(ctx, newT, "primary_slot"); err != nil {
		t.Fatal(err)
	}
	if err := CreateSlot(ctx, newT, "primary_slot"); err != nil {
		t.Fatalf("CreateSlot is not idempotent: %v", err)
	}
	// The old primary's slot for its standby survived the crash; it must not survive the rejoin.
	if _, err := os.Stat(filepath.Join(local.DataDir, "pg_replslot", "standby1_slot")); err != nil {
		t.Fatalf("the old primary has no slot for its standby before the rewind: %v", err)
	}
	stop := guardClosed(t, net.JoinHostPort(old.Host, strconv.Itoa(old.Port)))
	res, err := Rewind(ctx, local, newT, RewindOptions{Logger: testLogger(t)})
	dials := stop()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("rewind: method %s, timings %+v, %d connection attempts refused meanwhile, slots removed %v", res.Method, res.Timings, dials, res.RemovedSlots)
	if res.Method != MethodRewind || !res.CrashRecovered || res.SourceTimeline != 2 || res.AsideDir != "" {
		t.Errorf("Rewind = method %s, crash recovered %v, source timeline %d, aside %q; want a rewind after crash recovery from timeline 2",
			res.Method, res.CrashRecovered, res.SourceTimeline, res.AsideDir)
	}
	// PostgreSQL's own account of where the old primary's WAL ended must be FinalLSN's, and
	// single-user mode never opened for connections.
	if !strings.Contains(res.CrashRecoveryLog, "automatic recovery in progress") ||
		!strings.Contains(res.CrashRecoveryLog, " at "+pglsn.Format(final)+":") {
		t.Errorf("crash recovery log does not show recovery ending at %s:\n%s", pglsn.Format(final), res.CrashRecoveryLog)
	}
	if strings.Contains(res.CrashRecoveryLog, "ready to accept connections") {
		t.Errorf("crash recovery accepted connections:\n%s", res.CrashRecoveryLog)
	}
	if strings.Contains(res.RewindLog, benchPassword) || strings.Contains(res.CrashRecoveryLog, benchPassword) {
		t.Error("a log holds the password")
	}

	// A second call (a keeper resuming after a crash) finds the work done.
	if again, err := Rewind(ctx, local, newT, RewindOptions{}); err != nil || !again.Resumed || again.Method != MethodRewind || again.CrashRecovered {
		t.Errorf("Rewind again: %+v, %v; want it resumed, with nothing run", again, err)
	}
	if err := ConfigureStandby(local, ConninfoFor(newT, "rejoined"), "primary_slot"); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(local.DataDir, "postgresql.auto.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("postgresql.auto.conf has mode %v, want 0600", fi.Mode().Perm())
	}
	if err := old.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := pgops.WaitStreamingFrom(ctx, oldT, s1.Host, uint16(s1.Port)); err != nil {
		t.Fatal(err)
	}
	if tl, err := old.Timeline(ctx); err != nil || tl != 2 {
		t.Errorf("the rejoined node receives timeline %d (%v), want 2", tl, err)
	}
	var slotUser string
	if err := s1.QueryRow(ctx, "SELECT coalesce((SELECT application_name FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid WHERE s.slot_name = 'primary_slot'), '')").Scan(&slotUser); err != nil {
		t.Fatal(err)
	}
	if slotUser != "rejoined" {
		t.Errorf("the slot primary_slot is used by %q, want the rejoined node", slotUser)
	}

	// The rows committed after the fork are gone from both servers, and the rejoined node
	// follows new writes.
	if err := s1.Exec(ctx, `INSERT INTO `+pgtest.LoadTable+` (id, payload) VALUES (-1, 'after')`); err != nil { // an id the lost rows cannot have
		t.Fatal(err)
	}
	if err := old.WaitCaughtUp(ctx, s1); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*pgtest.Server{s1, old} {
		missing, err := s.MissingRows(ctx, ids)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(missing, ids) {
			t.Errorf("rows missing on %s: %v, want all %d lost rows %v", s.Name, missing, len(ids), ids)
		}
	}
	var after, slots int
	if err := old.QueryRow(ctx, `SELECT (SELECT count(*) FROM `+pgtest.LoadTable+` WHERE payload = 'after'), (SELECT count(*) FROM pg_replication_slots)`).Scan(&after, &slots); err != nil {
		t.Fatal(err)
	}
	if after != 1 || slots != 0 {
		t.Errorf("on the rejoined node: %d rows written after the failover (want 1), %d replication slots (want 0)", after, slots)
	}
}

// TestRecloneWhenRewindImpossible runs the bench without wal_log_hints (and, as initdb does by
// default, without data checksums): pg_rewind then refuses the old primary for real, and only a
// re-clone can bring it back.
func TestRecloneWhenRewindImpossible(t *testing.T) {
	b := pgtest.Start(t, pgtest.Options{Standbys: 1, PasswordAuth: true, Password: benchPassword,
		Settings: map[string]string{"autovacuum": "off", "wal_log_hints": "off"}})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	old, s1 := b.Primary, b.Standbys[0]
	local := Local{BinDir: b.BinDir(), DataDir: old.DataDir}
	oldT, newT := target(b, old), target(b, s1)

	ids, _, _ := failover(t, ctx, b)
	loss, err := Measure(ctx, local, newT)
	if err != nil {
		t.Fatal(err)
	}
	if loss.Transactions != lostRows || loss.Bytes <= 0 {
		t.Errorf("Measure = %+v, want %d lost transactions", loss, lostRows)
	}
	ownAutoConf, err := os.ReadFile(filepath.Join(local.DataDir, "postgresql.auto.conf"))
	if err != nil {
		t.Fatal(err)
	}

	t.Run("another cluster is refused", func(t *testing.T) {
		other, err := b.NewPrimary(ctx, "other")
		if err != nil {
			t.Fatal(err)
		}
		defer other.Stop(ctx)
		for name, f := range map[string]func() (Result, error){
			"Rewind":  func() (Result, error) { return Rewind(ctx, local, target(b, other), RewindOptions{AllowReclone: true}) },
			"Reclone": func() (Result, error) { return Reclone(ctx, local, target(b, other), RewindOptions{}) },
		} {
			if res, err := f(); !errors.Is(err, ErrDifferentSystem) || res.AsideDir != "" || res.CrashRecovered {
				t.Errorf("%s from another cluster: %v (result %+v), want ErrDifferentSystem and nothing done", name, err, res)
			}
		}
		cd, err := ReadControlData(ctx, local)
		if err != nil {
			t.Fatal(err)
		}
		if cd.State != StateInProduction {
			t.Errorf("the old primary's state is %q after refusals, want it untouched (%q)", cd.State, StateInProduction)
		}
	})

	res, err := Rewind(ctx, local, newT, RewindOptions{})
	if !errors.Is(err, ErrRewindImpossible) || !strings.Contains(err.Error(), "wal_log_hints") {
		t.Fatalf("Rewind without wal_log_hints: %v, want ErrRewindImpossible naming wal_log_hints", err)
	}
	if !res.CrashRecovered || res.Method != "" || res.AsideDir != "" {
		t.Errorf("refused Rewind: %+v, want crash recovery done and nothing else", res)
	}
	t.Logf("refused: %v", err)
	cd, err := ReadControlData(ctx, local)
	if err != nil {
		t.Fatal(err)
	}
	if cd.State != StateShutDown || cd.WALLogHints || cd.DataChecksums {
		t.Errorf("after the refusal: state %q, wal_log_hints %v, checksums %v; want a clean shutdown of a cluster without either", cd.State, cd.WALLogHints, cd.DataChecksums)
	}
	// Crash recovery only added checkpoint records after the old end of WAL: no commit.
	final2, tli2, err := FinalLSN(ctx, local)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := LostTransactions(ctx, local, loss.FinalLSN, final2, tli2); err != nil || final2 <= loss.FinalLSN || tli2 != loss.Timeline || n != 0 {
		t.Errorf("WAL after crash recovery ends at %s on timeline %d (before: %s) with %d commits after the old end (%v); want a later end and no commit",
			pglsn.Format(final2), tli2, pglsn.Format(loss.FinalLSN), n, err)
	}

	if err := CreateSlot(ctx, newT, "primary_slot"); err != nil {
		t.Fatal(err)
	}
	res, err = Rewind(ctx, local, newT, RewindOptions{AllowReclone: true, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("re-clone: timings %+v, aside %s", res.Timings, res.AsideDir)
	if res.Method != MethodReclone || res.CrashRecovered || !strings.Contains(res.RewindImpossible, "wal_log_hints") || res.AsideDir == "" {
		t.Errorf("Rewind with AllowReclone = %+v, want a re-clone because of wal_log_hints", res)
	}
	if _, err := os.Stat(filepath.Join(res.AsideDir, "PG_VERSION")); err != nil {
		t.Errorf("the old data directory was not kept aside: %v", err)
	}
	// The node's own postgresql.auto.conf is back (the source's has pg_basebackup -R's
	// primary_conninfo pointing at the dead old primary).
	if got, err := os.ReadFile(filepath.Join(local.DataDir, "postgresql.auto.conf")); err != nil || !bytes.Equal(got, ownAutoConf) {
		t.Errorf("postgresql.auto.conf after the re-clone is %q (%v), want the node's own %q", got, err, ownAutoConf)
	}

	// The clone's control file says "in production" (the source's state): single-user crash
	// recovery must not touch it, or the node would end its recovery as a primary.
	if ran, _, err := CompleteCrashRecovery(ctx, local); ran || !errors.Is(err, ErrNotCleanlyStopped) {
		t.Errorf("CompleteCrashRecovery of a fresh clone: ran %v, %v; want ErrNotCleanlyStopped", ran, err)
	}
	if again, err := Rewind(ctx, local, newT, RewindOptions{}); err != nil || !again.Resumed || again.Method != MethodReclone {
		t.Errorf("Rewind after the re-clone: %+v, %v; want it resumed", again, err)
	}

	if err := ConfigureStandby(local, ConninfoFor(newT, "rejoined"), "primary_slot"); err != nil {
		t.Fatal(err)
	}
	if err := old.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := pgops.WaitStreamingFrom(ctx, oldT, s1.Host, uint16(s1.Port)); err != nil {
		t.Fatal(err)
	}
	if tl, err := old.Timeline(ctx); err != nil || tl != 2 {
		t.Errorf("the re-cloned node receives timeline %d (%v), want 2", tl, err)
	}
	for _, s := range []*pgtest.Server{s1, old} {
		missing, err := s.MissingRows(ctx, ids)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(missing, ids) {
			t.Errorf("rows missing on %s: %v, want all %d lost rows", s.Name, missing, len(ids))
		}
	}
}

// The leader writes regent.heartbeat on every primary each second: those commits are no
// user's work, so with the heartbeat table excluded they are not lost transactions — but a
// transaction that also wrote a user table, in itself or in a subtransaction, still is.
func TestLostTransactionsExcludeHeartbeats(t *testing.T) {
	b := pgtest.Start(t, pgtest.Options{Standbys: 1, PasswordAuth: true, Password: benchPassword,
		Settings: map[string]string{"autovacuum": "off"}})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := b.Primary.Exec(ctx, heartbeat.Schema); err != nil {
		t.Fatal(err)
	}
	const beats = 7
	beat := `INSERT INTO regent.heartbeat (cluster, node, region, ts, lsn) VALUES ('orders', 'pg-us', 'us', now(), pg_current_wal_lsn())
		ON CONFLICT (cluster, node) DO UPDATE SET ts = excluded.ts, lsn = excluded.lsn`
	row := `INSERT INTO ` + pgtest.LoadTable + ` (payload) VALUES ('mixed')`
	_, _, _ = failoverWith(t, ctx, b, func(c *pgx.Conn) {
		for _, sql := range []string{
			beat, beat, beat,
			"BEGIN; " + beat + "; " + row + "; COMMIT",                                    // lost: it wrote a user row
			"BEGIN; " + beat + "; SAVEPOINT s; " + row + "; RELEASE SAVEPOINT s; COMMIT",  // lost: its subtransaction did
			"BEGIN; SAVEPOINT s; " + beat + "; RELEASE SAVEPOINT s; " + beat + "; COMMIT", // a heartbeat, subtransaction and all
			beat, beat, beat,
		} {
			if _, err := c.Exec(ctx, sql); err != nil {
				t.Fatalf("%s: %v", sql, err)
			}
		}
	})
	local := Local{BinDir: b.BinDir(), DataDir: b.Primary.DataDir}
	newT := target(b, b.Standbys[0])
	rels, err := TableRelFiles(ctx, newT, "regent.heartbeat")
	if err != nil {
		t.Fatal(err)
	}
	if len(rels) != 4 {
		t.Fatalf("TableRelFiles(regent.heartbeat) = %v, want the table, its primary key, its TOAST table and TOAST index", rels)
	}
	all, err := Measure(ctx, local, newT)
	if err != nil {
		t.Fatal(err)
	}
	loss, err := MeasureWith(ctx, local, newT, ScanOptions{Exclude: rels})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("without exclusions %+v; with %+v", all.WAL, loss.WAL)
	if want := lostRows + 2; loss.Transactions != want || loss.WAL.Excluded != beats || loss.WAL.Commits != want+beats {
		t.Errorf("with regent excluded: %d lost, %d excluded of %d commits; want %d lost, %d excluded of %d",
			loss.Transactions, loss.WAL.Excluded, loss.WAL.Commits, want, beats, want+beats)
	}
	if all.Transactions != lostRows+2+beats || all.WAL.Excluded != 0 || all.Bytes != loss.Bytes {
		t.Errorf("without exclusions: %+v; want %d lost and the same bytes", all, lostRows+2+beats)
	}
	if none, err := TableRelFiles(ctx, newT, "regent.no_such_table"); err != nil || len(none) != 0 {
		t.Errorf("TableRelFiles of a missing table = %v, %v; want none", none, err)
	}
}
