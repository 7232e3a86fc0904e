package e2e

import (
	"context"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/regentdb/regent/internal/pglsn"
	"github.com/regentdb/regent/internal/witnesstest"
	"github.com/regentdb/regent/pgtest"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// rejoinTable is where the test's writer commits one row per transaction (the table
// pgtest's MissingRows looks in).
const rejoinTable = pgtest.LoadTable

// The old primary killed with SIGKILL (with its keeper) while some acknowledged commits had
// reached no standby, failed over automatically, then its keeper restarted: it never accepts a
// write, rewinds, streams from the new primary, and its channel goes rebuilding → active; the
// failover event's data_loss_bytes equals the WAL distance from the fork point (the new
// primary's timeline history) to the old primary's final LSN (pg_waldump on its data
// directory before anything restarted it), exactly, and lost_transactions equals the writer's
// acknowledged rows missing on the new primary — regent's own heartbeat commits, which go on
// after the cut, are not counted.
func TestRejoinAfterKill9(t *testing.T) {
	r := startRig(t, rigOptions{})
	ctx := witnesstest.Context(t, 5*time.Minute)
	us := r.nodes["pg-us"]
	// Only the writer's transactions may commit on pg-us once replication is cut: no
	// autovacuum or autoanalyze (an ANALYZE commits too). The leader's heartbeats go on.
	for _, sql := range []string{"ALTER SYSTEM SET autovacuum = off", "SELECT pg_reload_conf()",
		`CREATE TABLE ` + rejoinTable + ` (id bigint PRIMARY KEY) WITH (autovacuum_enabled = false)`} {
		if err := us.pg.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	// The leader's heartbeat table exists on every server before the cut, as it does on any
	// cluster regent has watched for a second: the keeper recognises heartbeat commits by the
	// table's storage on the new primary (one created after the fork would not be there).
	witnesstest.Eventually(t, wait, "regent.heartbeat on pg-us", func() bool {
		var ok bool
		return us.pg.QueryRow(ctx, "SELECT to_regclass('regent.heartbeat') IS NOT NULL").Scan(&ok) == nil && ok
	})
	for _, n := range []string{"pg-eu", "pg-ap"} {
		if err := r.nodes[n].pg.WaitCaughtUp(ctx, us.pg); err != nil {
			t.Fatal(err)
		}
	}

	w := startRowWriter(t, us.pg)
	w.waitAcked(t, 20)
	// Cut replication: both standbys point at a closed port, so from here the primary's
	// commits (the writer's and the heartbeats) reach no standby.
	for _, n := range []string{"pg-eu", "pg-ap"} {
		s := r.nodes[n].pg
		for _, sql := range []string{"ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port=1 connect_timeout=1'", "SELECT pg_reload_conf()"} {
			if err := s.Exec(ctx, sql); err != nil {
				t.Fatalf("%s on %s: %v", sql, n, err)
			}
		}
	}
	witnesstest.Eventually(t, wait, "no standby streaming from pg-us", func() bool {
		var n int
		return us.pg.QueryRow(ctx, "SELECT count(*) FROM pg_stat_replication").Scan(&n) == nil && n == 0
	})
	cutAt, cutAcks := time.Now(), w.count()
	// A few seconds of writes the standbys never get: the leader's heartbeat (every second)
	// commits among them.
	witnesstest.Eventually(t, wait, "25 more rows and 2.5 s of writes after the cut", func() bool {
		return w.count() >= cutAcks+25 && time.Since(cutAt) > 2500*time.Millisecond
	})
	w.stop()
	acked := w.ids()
	t.Logf("the writer had %d acknowledged rows, %d of them after replication was cut", len(acked), len(acked)-cutAcks)

	// Host loss: the keeper goes (it fences its server on the way out, which writes no WAL),
	// then the postmaster dies with SIGKILL.
	r.stopKeeper(us)
	if err := us.pg.Kill9(); err != nil {
		t.Fatal(err)
	}
	ev := r.waitFailover(2 * wait)
	nu := r.nodes[ev.GetToNode()]
	t.Logf("failover %d: pg-us → %s, estimated loss %d bytes", ev.GetId(), nu.name, ev.GetDataLossBytes())

	// Independent figures, before anything starts pg-us again: the fork point from the new
	// primary's timeline history, the old primary's end of WAL from pg_waldump's own report,
	// and the acknowledged rows the new primary lacks.
	fork := forkPoint(t, ctx, nu.pg)
	final := endOfWAL(t, ctx, r.bench, us.pg, fork)
	others := otherRecords(t, ctx, r.bench, us.pg, nu.pg, fork, final)
	missing, err := nu.pg.MissingRows(ctx, acked)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("fork %s, old primary's final LSN %s: %d bytes; %d acknowledged rows missing on %s",
		pglsn.Format(fork), pglsn.Format(final), final-fork, len(missing), nu.name)
	if len(missing) == 0 || final <= fork {
		t.Fatalf("the failover lost nothing (%d rows, fork %s, final %s): the cut did not hold", len(missing),
			pglsn.Format(fork), pglsn.Format(final))
	}

	// From the keeper's restart on: pg-us must never be writable, and its channel must be seen
	// rebuilding, then active.
	never := watchNeverWritable(t, us.pg)
	chans := watchChannel(t, r, regionOf(r, nu.name), regionOf(r, "pg-us"))
	// While the keeper is down the leader keeps asking, and says so on the event.
	witnesstest.Eventually(t, wait, "the rejoin pending: pg-us's keeper does not answer", func() bool {
		rj := r.failover().GetRejoin()
		return rj.GetStatus() == regentv1.RejoinStatus_REJOIN_STATUS_PENDING && strings.Contains(rj.GetDetail(), "does not answer")
	})
	r.startKeeper(us)
	var done *regentv1.FailoverEvent
	witnesstest.Eventually(t, 2*wait, "pg-us rejoined and caught up, its channel active", func() bool {
		done = r.failover()
		ch := channelOf(r.state(), regionOf(r, nu.name), regionOf(r, "pg-us"))
		return done.GetRejoin().GetStatus() == regentv1.RejoinStatus_REJOIN_STATUS_CAUGHT_UP &&
			ch.GetStatus() == regentv1.ChannelStatus_CHANNEL_STATUS_ACTIVE
	})
	if bad := never(); bad != "" {
		t.Error(bad)
	}
	seen := chans()
	t.Logf("channel %s → %s statuses: %s; rejoin %v", regionOf(r, nu.name), regionOf(r, "pg-us"), seen, done.GetRejoin())
	if !regexp.MustCompile(`rebuilding( rebuilding)* active`).MatchString(seen) {
		t.Errorf("the channel went %s, want rebuilding then active", seen)
	}

	if !done.GetDataLossExact() || done.GetDataLossBytes() != int64(final-fork) {
		t.Errorf("data_loss_bytes %d (exact %v), want exactly %d (fork %s → final %s)", done.GetDataLossBytes(),
			done.GetDataLossExact(), final-fork, pglsn.Format(fork), pglsn.Format(final))
	}
	if done.LostTransactions == nil || done.GetLostTransactions() != int64(len(missing)) {
		t.Errorf("lost_transactions %d, want %d (the writer's acknowledged rows missing on %s); the discarded WAL's other records:\n%s",
			done.GetLostTransactions(), len(missing), nu.name, others)
	}
	if done.GetForkLsn() != fork || done.GetFinalLsn() != final {
		t.Errorf("event fork %s final %s, want %s %s", pglsn.Format(done.GetForkLsn()), pglsn.Format(done.GetFinalLsn()),
			pglsn.Format(fork), pglsn.Format(final))
	}
	if m := done.GetRejoin().GetMethod(); m != "rewind" {
		t.Errorf("rejoin method %q, want rewind", m)
	}
	if c := r.cluster(); c.GetPrimary() != nu.name || roleOf(c, "pg-us") != regentv1.NodeRole_NODE_ROLE_REPLICA {
		t.Errorf("after the rejoin: primary %s, pg-us %v", c.GetPrimary(), roleOf(c, "pg-us"))
	}
	// A standby of the new primary, on its timeline, without the lost rows.
	witnesstest.Eventually(t, wait, "pg-us streaming from "+nu.name, func() bool {
		var rec bool
		var host *string
		var port *int32
		err := us.pg.QueryRow(ctx, `SELECT pg_is_in_recovery(), (SELECT sender_host FROM pg_stat_wal_receiver WHERE status = 'streaming'),
			(SELECT sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming')`).Scan(&rec, &host, &port)
		return err == nil && rec && host != nil && port != nil &&
			net.JoinHostPort(*host, strconv.Itoa(int(*port))) == net.JoinHostPort(nu.pg.Host, strconv.Itoa(nu.pg.Port))
	})
	if err := us.pg.WaitCaughtUp(ctx, nu.pg); err != nil {
		t.Fatal(err)
	}
	if still, err := us.pg.MissingRows(ctx, missing); err != nil || len(still) != len(missing) {
		t.Errorf("rows lost in the failover that pg-us still holds after its rewind: %d of %d missing (%v)", len(still), len(missing), err)
	}
}

// rowWriter commits one row per transaction on a server and records every acknowledged id.
type rowWriter struct {
	mu       sync.Mutex
	acked    []int64
	stopping atomic.Bool
	done     chan struct{}
}

func startRowWriter(t *testing.T, s *pgtest.Server) *rowWriter {
	t.Helper()
	w := &rowWriter{done: make(chan struct{})}
	c, err := s.Connect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(w.done)
		defer c.Close(context.Background())
		// Stopping is checked between statements, never by cancelling one: a cancelled
		// INSERT may commit unacknowledged, and then the count of lost rows would be short.
		tick := time.NewTicker(5 * time.Millisecond) // at most 200 rows a second
		defer tick.Stop()
		for id := int64(1); !w.stopping.Load(); id++ {
			<-tick.C
			ctx, cancel := context.WithTimeout(context.Background(), wait)
			// Autocommit: one transaction, one COMMIT record, per row.
			_, err := c.Exec(ctx, `INSERT INTO `+rejoinTable+` (id) VALUES ($1)`, id)
			cancel()
			if err != nil {
				t.Errorf("writer: row %d: %v", id, err)
				return
			}
			w.mu.Lock()
			w.acked = append(w.acked, id)
			w.mu.Unlock()
		}
	}()
	t.Cleanup(w.stop)
	return w
}

func (w *rowWriter) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acked)
}

func (w *rowWriter) ids() []int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]int64(nil), w.acked...)
}

func (w *rowWriter) waitAcked(t *testing.T, n int) {
	t.Helper()
	witnesstest.Eventually(t, wait, fmt.Sprintf("%d acknowledged rows", n), func() bool { return w.count() >= n })
}

// stop ends the writer after its current statement and waits for it: no transaction is in
// flight afterwards.
func (w *rowWriter) stop() {
	w.stopping.Store(true)
	<-w.done
}

// forkPoint reads where the new primary's timeline left timeline 1 from its history file.
func forkPoint(t *testing.T, ctx context.Context, s *pgtest.Server) uint64 {
	t.Helper()
	// The newest history file: the control file's timeline may lag until the promotion's
	// checkpoint is done.
	var hist string
	if err := s.QueryRow(ctx, `SELECT pg_read_file('pg_wal/' || name) FROM pg_ls_waldir()
		WHERE name LIKE '%.history' ORDER BY name DESC LIMIT 1`).Scan(&hist); err != nil {
		t.Fatalf("the newest timeline history file on %s: %v", s, err)
	}
	for _, line := range strings.Split(hist, "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "1" {
			lsn, err := pglsn.Parse(f[1])
			if err != nil {
				t.Fatal(err)
			}
			return lsn
		}
	}
	t.Fatalf("timeline 1 is not in %s's history:\n%s", s, hist)
	return 0
}

// invalidRecordRE is how pg_waldump (like crash recovery) reports the end of valid WAL.
var invalidRecordRE = regexp.MustCompile(`invalid record length at ([0-9A-F]+/[0-9A-F]+)`)

// endOfWAL reads the stopped server's WAL on timeline 1 from fork with pg_waldump until it
// stops, and returns where it says the valid WAL ends: the position crash recovery would
// report, independently of the rejoin package's arithmetic.
func endOfWAL(t *testing.T, ctx context.Context, b *pgtest.Bench, s *pgtest.Server, fork uint64) uint64 {
	t.Helper()
	out, err := b.Run(ctx, "pg_waldump", "--path="+s.DataDir+"/pg_wal", "--timeline=1", "--start="+pglsn.Format(fork), "--quiet")
	m := invalidRecordRE.FindSubmatch(out)
	if m == nil {
		t.Fatalf("pg_waldump did not report the end of the WAL (%v):\n%s", err, out)
	}
	lsn, perr := pglsn.Parse(string(m[1]))
	if perr != nil {
		t.Fatal(perr)
	}
	return lsn
}

// otherRecords lists the records of the old primary's WAL from fork to final that are not the
// writer's (its rows and their commits), for a failure to show what else committed there.
func otherRecords(t *testing.T, ctx context.Context, b *pgtest.Bench, old, nu *pgtest.Server, fork, final uint64) string {
	t.Helper()
	dump, err := b.Run(ctx, "pg_waldump", "--path="+old.DataDir+"/pg_wal", "--timeline=1",
		"--start="+pglsn.Format(fork), "--end="+pglsn.Format(final))
	if err != nil {
		return fmt.Sprintf("(pg_waldump: %v)", err)
	}
	var node int64
	if err := nu.QueryRow(ctx, "SELECT pg_relation_filenode('"+rejoinTable+"')::bigint").Scan(&node); err != nil {
		return fmt.Sprintf("(the writer's table: %v)", err)
	}
	writerRel := regexp.MustCompile(fmt.Sprintf(`rel \d+/\d+/%d\b`, node))
	txRE := regexp.MustCompile(`tx: +(\d+),`)
	lines := strings.Split(strings.TrimSpace(string(dump)), "\n")
	writer := map[string]bool{}
	for _, l := range lines {
		if m := txRE.FindStringSubmatch(l); m != nil && writerRel.MatchString(l) {
			writer[m[1]] = true
		}
	}
	var out []string
	for _, l := range lines {
		if m := txRE.FindStringSubmatch(l); m != nil && writer[m[1]] {
			continue
		}
		out = append(out, l)
	}
	return strings.Join(out, "\n")
}

// watchNeverWritable polls s until the returned function is called, which reports the first
// time s answered as a writable server ("" when it never did). Refused connections are fine.
func watchNeverWritable(t *testing.T, s *pgtest.Server) func() string {
	ctx, cancel := context.WithCancel(context.Background())
	var bad string
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for bad == "" {
			qctx, qcancel := context.WithTimeout(ctx, time.Second)
			var rec bool
			var ro string
			if err := s.QueryRow(qctx, "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only')").Scan(&rec, &ro); err == nil && !rec && ro != "on" {
				bad = fmt.Sprintf("pg-us answered as a writable primary at %v", time.Now().Format(time.RFC3339Nano))
			}
			qcancel()
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	var once sync.Once
	stop := func() string {
		once.Do(func() { cancel(); <-done })
		return bad
	}
	t.Cleanup(func() { stop() })
	return stop
}

// watchChannel follows a running witness's change history and returns a function that
// reports the statuses the channel primary → secondary of orders was committed with, in order
// and without repeats ("failed rebuilding active").
func watchChannel(t *testing.T, r *rig, primary, secondary string) func() string {
	f := r.w.Agents[r.w.Running()[0]].FSM()
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	var seen []string
	done := make(chan struct{})
	_, idx := f.State()
	go func() {
		defer close(done)
		for {
			evs, complete, wake := f.ChangesSince(idx)
			if !complete {
				t.Errorf("the change history lost events after index %d", idx)
			}
			for _, e := range evs {
				idx = max(idx, e.GetIndex())
				ch := e.GetChannel()
				if e.GetDeleted() || ch.GetCluster() != "orders" || ch.GetPrimaryRegion() != primary || ch.GetSecondaryRegion() != secondary {
					continue
				}
				s := strings.ToLower(strings.TrimPrefix(ch.GetStatus().String(), "CHANNEL_STATUS_"))
				mu.Lock()
				if len(seen) == 0 || seen[len(seen)-1] != s {
					seen = append(seen, s)
				}
				mu.Unlock()
			}
			select {
			case <-ctx.Done():
				return
			case <-wake:
			}
		}
	}()
	var once sync.Once
	stop := func() string {
		once.Do(func() { cancel(); <-done })
		mu.Lock()
		defer mu.Unlock()
		return strings.Join(seen, " ")
	}
	t.Cleanup(func() { stop() })
	return stop
}

func regionOf(r *rig, node string) string {
	for _, n := range r.spec.GetNodes() {
		if n.GetName() == node {
			return n.GetRegion()
		}
	}
	return ""
}

func channelOf(st *regentv1.State, primary, secondary string) *regentv1.ReplicationChannel {
	for _, ch := range st.GetChannels() {
		if ch.GetCluster() == "orders" && ch.GetPrimaryRegion() == primary && ch.GetSecondaryRegion() == secondary {
			return ch
		}
	}
	return nil
}

func roleOf(c *regentv1.Cluster, node string) regentv1.NodeRole {
	for _, ns := range c.GetNodeStatus() {
		if ns.GetName() == node {
			return ns.GetRole()
		}
	}
	return regentv1.NodeRole_NODE_ROLE_UNKNOWN
}
