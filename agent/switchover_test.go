package agent_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/regentdb/regent/cli"
	"github.com/regentdb/regent/internal/benchkeeper"
	"github.com/regentdb/regent/internal/witnesstest"
	"github.com/regentdb/regent/keeper"
	"github.com/regentdb/regent/pgops"
	"github.com/regentdb/regent/pgtest"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// switchoverRig is a real PostgreSQL primary (pg-us) with two streaming standbys (pg-eu,
// pg-ap), a keeper beside each, and three witnesses with the cluster applied (keeper_addr set)
// and observed.
type switchoverRig struct {
	*observeRig
	servers map[string]*pgtest.Server
	keepers map[string]*keeper.Keeper
}

// switchoverTTL is the lease of the policy and the keepers: with the keepers' 800 ms fence
// margin it leaves room on a loaded two-core machine (as the keeper tests do).
const switchoverTTL = 2 * time.Second

func startSwitchoverRig(t *testing.T) *switchoverRig {
	t.Helper()
	b := pgtest.Start(t, pgtest.Options{Standbys: 2})
	r := &switchoverRig{observeRig: &observeRig{bench: b, primary: b.Servers()[0], eu: b.Servers()[1], ap: b.Servers()[2]},
		keepers: map[string]*keeper.Keeper{}}
	r.servers = map[string]*pgtest.Server{"pg-us": r.primary, "pg-eu": r.eu, "pg-ap": r.ap}
	// A server a keeper stopped and started again is no longer pgtest's child; the bench's
	// Close stops it too (after the keepers, registered later, are gone).
	r.c = witnesstest.Start(t, 3, witnesstest.Options{})
	r.leader = r.c.WaitLeader(wait)
	r.c.WaitReady(wait)
	var ws []string
	for _, wc := range r.c.Configs {
		ws = append(ws, wc.GRPCAddr)
	}
	cfgs := map[string]keeper.Config{}
	for n, s := range r.servers {
		cfg, err := benchkeeper.Config(b, s, benchkeeper.Options{Cluster: "orders", Node: n, Witnesses: ws,
			StateDir: filepath.Join(t.TempDir(), "keeper-"+n), LeaseTTL: switchoverTTL, FenceMargin: 800 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		cfgs[n] = cfg
	}
	pol := testPolicy()
	pol.LeaseTtlMs = switchoverTTL.Milliseconds()
	sp := &regentv1.ClusterSpec{
		Name: "orders", Primary: "pg-us", Policy: pol,
		Nodes: []*regentv1.NodeSpec{
			{Name: "pg-us", Region: "us-east", Host: r.primary.Host, Port: uint32(r.primary.Port), KeeperAddr: cfgs["pg-us"].ListenGRPC},
			{Name: "pg-eu", Region: "eu-west", Host: r.eu.Host, Port: uint32(r.eu.Port), KeeperAddr: cfgs["pg-eu"].ListenGRPC},
			{Name: "pg-ap", Region: "ap-south", Host: r.ap.Host, Port: uint32(r.ap.Port), KeeperAddr: cfgs["pg-ap"].ListenGRPC},
		},
	}
	applyRetrying(t, witnesstest.Context(t, wait), r.c, r.leader, sp)
	for _, n := range []string{"pg-us", "pg-eu", "pg-ap"} {
		cfg := cfgs[n]
		var out io.Writer = io.Discard
		if os.Getenv("REGENT_TEST_LOG") != "" {
			out = os.Stderr
		}
		k, err := keeper.Start(cfg, slog.New(slog.NewTextHandler(out, nil)))
		if err != nil {
			t.Fatalf("start the keeper of %s: %v", n, err)
		}
		t.Cleanup(func() {
			if err := k.Shutdown(); err != nil {
				t.Logf("keeper of %s: %v", n, err)
			}
		})
		r.keepers[n] = k
	}
	witnesstest.Eventually(t, wait, "the cluster observed healthy and pg-us's keeper holding the lease", func() bool {
		for _, n := range []string{"pg-us", "pg-eu", "pg-ap"} {
			if up, _ := votes(r.node(n)); up != 3 {
				return false
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		st := r.keepers["pg-us"].Status(ctx, false)
		return st.HoldsLease && !st.Fenced && r.node("pg-eu").GetWalReceiverStatus() == "streaming" &&
			r.node("pg-ap").GetWalReceiverStatus() == "streaming"
	})
	return r
}

func (r *switchoverRig) cluster() *regentv1.Cluster {
	cl, _ := r.c.Agents[r.c.Running()[0]].FSM().Cluster("orders")
	return cl
}

func (r *switchoverRig) event(id uint64) *regentv1.FailoverEvent {
	st, _ := r.c.Agents[r.c.Running()[0]].FSM().State()
	for _, e := range st.GetFailoverEvents() {
		if e.GetId() == id {
			return e
		}
	}
	return nil
}

func (r *switchoverRig) lastEvent() *regentv1.FailoverEvent {
	st, _ := r.c.Agents[r.c.Running()[0]].FSM().State()
	evs := st.GetFailoverEvents()
	if len(evs) == 0 {
		return nil
	}
	return evs[len(evs)-1]
}

// switchover runs `regent switchover --wait` against a follower and returns its exit code and
// output.
func (r *switchoverRig) switchover(t *testing.T, to string, extra ...string) (int, string) {
	t.Helper()
	ctx := witnesstest.Context(t, 3*wait)
	var out, errOut bytes.Buffer
	addr := r.c.Configs[r.c.Follower(r.c.WaitLeader(wait))].GRPCAddr
	args := append([]string{"--addr", addr, "switchover", "--cluster", "orders", "--to", to, "--wait"}, extra...)
	code := cli.Run(ctx, args, &out, &errOut)
	return code, out.String() + errOut.String()
}

// ack is one acknowledged write: its id, the node that committed it and when the commit
// returned.
type ack struct {
	id   int64
	node string
	at   time.Time
}

// writer inserts one row per transaction into sw_writes on whatever node the witnesses name
// primary, reconnecting when that changes or the connection breaks, and records every
// acknowledged id with its node and time.
type writer struct {
	r *switchoverRig
	// primary names the node the committed state calls primary, read from one witness that
	// stays up (a witness stopped meanwhile would race with the test).
	primary func() string
	mu      sync.Mutex
	acks    []ack
	errs    int
	cancel  context.CancelFunc
	done    chan struct{}
}

// startWriter starts a writer that reads the committed primary from witness via.
func startWriter(t *testing.T, r *switchoverRig, via int) *writer {
	t.Helper()
	ctx := witnesstest.Context(t, wait)
	if err := r.primary.Exec(ctx, "CREATE TABLE IF NOT EXISTS sw_writes (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())"); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(context.Background())
	fsm := r.c.Agents[via].FSM()
	primary := func() string {
		cl, _ := fsm.Cluster("orders")
		return cl.GetPrimary()
	}
	w := &writer{r: r, primary: primary, cancel: cancel, done: make(chan struct{})}
	go w.run(wctx)
	t.Cleanup(w.stop)
	return w
}

func (w *writer) run(ctx context.Context) {
	defer close(w.done)
	var conn *pgx.Conn
	var connNode string
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	retry := time.NewTimer(0)
	defer retry.Stop()
	for id := int64(1); ; id++ {
		select {
		case <-ctx.Done():
			return
		case <-retry.C:
		}
		node := w.primary()
		if conn != nil && (connNode != node || conn.IsClosed()) {
			conn.Close(context.Background())
			conn = nil
		}
		err := func() error {
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			if conn == nil {
				c, err := pgx.Connect(cctx, w.r.servers[node].ConnString())
				if err != nil {
					return err
				}
				conn, connNode = c, node
			}
			_, err := conn.Exec(cctx, "INSERT INTO sw_writes (id) VALUES ($1)", id)
			return err
		}()
		if err == nil {
			w.mu.Lock()
			w.acks = append(w.acks, ack{id: id, node: node, at: time.Now()})
			w.mu.Unlock()
			retry.Reset(0)
			continue
		}
		w.mu.Lock()
		w.errs++
		w.mu.Unlock()
		var pe *pgconn.PgError
		if conn != nil && !errors.As(err, &pe) {
			conn.Close(context.Background()) // broken: reconnect next time
			conn = nil
		}
		retry.Reset(2 * time.Millisecond)
	}
}

func (w *writer) stop() {
	w.cancel()
	<-w.done
}

func (w *writer) snapshot() []ack {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.acks)
}

// failed is how many write attempts failed so far.
func (w *writer) failed() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.errs
}

// waitAcks waits until n more writes than now are acknowledged on node.
func (w *writer) waitAcks(t *testing.T, node string, n int) {
	t.Helper()
	base := 0
	for _, a := range w.snapshot() {
		if a.node == node {
			base++
		}
	}
	witnesstest.Eventually(t, wait, fmt.Sprintf("%d acknowledged writes on %s", n, node), func() bool {
		c := 0
		for _, a := range w.snapshot() {
			if a.node == node {
				c++
			}
		}
		return c >= base+n
	})
}

// longestGap is the longest time between two consecutive acknowledgements after from, and
// the ids around it.
func longestGap(acks []ack, from time.Time) (time.Duration, ack, ack) {
	var gap time.Duration
	var a, b ack
	for i := 1; i < len(acks); i++ {
		if acks[i].at.Before(from) {
			continue
		}
		if d := acks[i].at.Sub(acks[i-1].at); d > gap {
			gap, a, b = d, acks[i-1], acks[i]
		}
	}
	return gap, a, b
}

// checkAllAcked checks that every acknowledged id is on node s.
func checkAllAcked(t *testing.T, s *pgtest.Server, acks []ack) {
	t.Helper()
	rows, err := s.Query(witnesstest.Context(t, wait), "SELECT id FROM sw_writes")
	if err != nil {
		t.Fatalf("read sw_writes on %s: %v", s, err)
	}
	have := make(map[int64]bool, len(rows))
	for _, row := range rows {
		id, err := strconv.ParseInt(fmt.Sprint(row[0]), 10, 64)
		if err != nil {
			t.Fatalf("id %v: %v", row[0], err)
		}
		have[id] = true
	}
	var missing []int64
	for _, a := range acks {
		if !have[a.id] {
			missing = append(missing, a.id)
		}
	}
	if len(missing) > 0 {
		t.Errorf("%d of %d acknowledged writes are missing on %s: %v", len(missing), len(acks), s, missing[:min(len(missing), 20)])
	}
}

// receivedTimeline is the timeline the WAL receiver of s streams, and from where.
func receivedTimeline(ctx context.Context, s *pgtest.Server) (uint32, string, error) {
	var tli int64
	var host string
	var port int64
	err := s.QueryRow(ctx, "SELECT received_tli, sender_host, sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming'").Scan(&tli, &host, &port)
	return uint32(tli), fmt.Sprintf("%s:%d", host, port), err
}

// switchoverOnce switches the cluster over from its primary to `to` under the writer's load
// and checks the zero-loss promises; it returns the write unavailability (the longest gap
// between acknowledged writes around the switchover).
func switchoverOnce(t *testing.T, r *switchoverRig, w *writer, to string) time.Duration {
	t.Helper()
	from := r.cluster().GetPrimary()
	w.waitAcks(t, from, 50)
	// As an operator would: switch over to a standby the witnesses see streaming.
	witnesstest.Eventually(t, wait, to+" observed streaming", func() bool {
		ns := r.node(to)
		return ns.GetRole() == regentv1.NodeRole_NODE_ROLE_REPLICA && ns.GetWalReceiverStatus() == "streaming"
	})
	start := time.Now()
	code, out := r.switchover(t, to)
	t.Logf("regent switchover --to %s --wait:\n%s", to, out)
	if code != 0 {
		t.Fatalf("regent switchover: exit %d", code)
	}
	ev := r.lastEvent()
	if ev.GetStep() != regentv1.FailoverStep_FAILOVER_STEP_COMPLETED || !ev.GetSwitchover() || ev.GetToNode() != to || ev.GetFromNode() != from {
		t.Fatalf("switchover event: %v", ev)
	}
	if ev.DataLossBytes == nil || ev.GetDataLossBytes() != 0 || !ev.GetDataLossExact() || ev.GetFinalLsn() == 0 || ev.GetForkLsn() != ev.GetFinalLsn() {
		t.Errorf("loss %v exact %v final %X fork %X, want 0 measured with fork = final", ev.DataLossBytes, ev.GetDataLossExact(), ev.GetFinalLsn(), ev.GetForkLsn())
	}
	if !strings.Contains(out, "data loss measured: 0 B (exact)") {
		t.Errorf("the CLI did not report the measured loss: %q", out)
	}
	// Writes go on at the new primary.
	w.waitAcks(t, to, 50)
	acks := w.snapshot()
	gap, a, b := longestGap(acks, start)
	t.Logf("switchover %s → %s: write unavailability %v (write %d on %s at %s, next %d on %s at %s); %d writes acknowledged so far, %d attempts failed",
		from, to, gap.Round(time.Millisecond), a.id, a.node, a.at.Format("15:04:05.000"), b.id, b.node, b.at.Format("15:04:05.000"), len(acks), w.failed())
	for _, st := range ev.GetSteps() {
		t.Logf("  %-9s %s", strings.ToLower(strings.TrimPrefix(st.GetStep().String(), "FAILOVER_STEP_")), st.GetAt().AsTime().Format("15:04:05.000"))
	}
	t.Logf("  notes: %s", strings.Join(ev.GetNotes(), " | "))

	// Every acknowledged write is on the new primary.
	checkAllAcked(t, r.servers[to], acks)

	// The old primary streams from the new one on the new timeline, without a rewind.
	ctx := witnesstest.Context(t, wait)
	old, nw := r.servers[from], r.servers[to]
	if err := pgops.WaitStreamingFrom(ctx, target(&failoverRig{observeRig: r.observeRig}, old), nw.Host, uint16(nw.Port)); err != nil {
		t.Fatalf("the old primary %s does not stream from %s: %v", from, to, err)
	}
	newTLI, err := nw.Timeline(ctx)
	if err != nil {
		t.Fatal(err)
	}
	witnesstest.Eventually(t, wait, from+" receiving the new timeline", func() bool {
		tli, _, err := receivedTimeline(ctx, old)
		return err == nil && tli == newTLI
	})
	if st := r.keepers[from].Status(ctx, false); st.LastRejoin != "" || !st.InRecovery {
		t.Errorf("old primary's keeper: rejoin %q (a REJOIN rewinds; a switchover must not), in recovery %v", st.LastRejoin, st.InRecovery)
	}
	if err := old.WaitCaughtUp(ctx, nw); err != nil {
		t.Errorf("the old primary does not catch up with the new one: %v", err)
	}
	checkAllAcked(t, old, acks)
	return gap
}

// TestSwitchoverUnderWriteLoadLosesNothing switches over and back under a write load (one row
// per transaction): every acknowledged write is on the new primary, the loss is measured 0,
// the old primary streams from the new one on its timeline without a rewind, and the write
// unavailability is logged. REGENT_SWITCHOVER_RUNS=N makes N switchovers (BENCHMARKS.md).
func TestSwitchoverUnderWriteLoadLosesNothing(t *testing.T) {
	r := startSwitchoverRig(t)
	w := startWriter(t, r, r.c.Follower(r.c.WaitLeader(wait)))
	runs := 2
	if v, err := strconv.Atoi(os.Getenv("REGENT_SWITCHOVER_RUNS")); err == nil && v > 0 {
		runs = v
	}
	var gaps []time.Duration
	for i := range runs {
		to := "pg-eu"
		if r.cluster().GetPrimary() == "pg-eu" {
			to = "pg-us"
		}
		if i%3 == 2 {
			to = map[string]string{"pg-us": "pg-ap", "pg-eu": "pg-ap", "pg-ap": "pg-us"}[r.cluster().GetPrimary()]
		}
		gaps = append(gaps, switchoverOnce(t, r, w, to))
		if t.Failed() {
			return
		}
	}
	// The third node follows whichever is primary.
	p := r.servers[r.cluster().GetPrimary()]
	for n, s := range r.servers {
		if s == p {
			continue
		}
		if err := pgops.WaitStreamingFrom(witnesstest.Context(t, wait), target(&failoverRig{observeRig: r.observeRig}, s), p.Host, uint16(p.Port)); err != nil {
			t.Errorf("%s does not stream from the primary: %v", n, err)
		}
	}
	// The operator's switchovers are audited under their name.
	st, _ := r.c.Agents[r.c.Running()[0]].FSM().State()
	audited := 0
	for _, a := range st.GetAudit() {
		if a.GetAction() == "cluster.switchover" && a.GetActor() == cli.Actor() {
			audited++
		}
	}
	if audited != runs {
		t.Errorf("%d switchovers audited under %s, want %d", audited, cli.Actor(), runs)
	}
	sorted := slices.Clone(gaps)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	med := sorted[len(sorted)/2]
	if len(sorted)%2 == 0 {
		med = (sorted[len(sorted)/2-1] + sorted[len(sorted)/2]) / 2
	}
	t.Logf("write unavailability over %d switchovers: median %v, max %v (all: %v)", runs,
		med.Round(time.Millisecond), sorted[len(sorted)-1].Round(time.Millisecond), gaps)
}

// TestSwitchoverToATargetThatCannotCatchUpAborts: a target that applies WAL an hour late
// never replays the fenced primary's WAL end, so the switchover aborts at its timeout and the
// old primary takes writes again; nothing was demoted or promoted.
func TestSwitchoverToATargetThatCannotCatchUpAborts(t *testing.T) {
	r := startSwitchoverRig(t)
	ctx := witnesstest.Context(t, 3*wait)
	// Refused up front, with what to do: the primary itself is no target.
	if code, out := r.switchover(t, "pg-us"); code == 0 || !strings.Contains(out, "already the primary") {
		t.Errorf("switchover to the primary: exit %d: %s", code, out)
	}
	if err := r.eu.Exec(ctx, "ALTER SYSTEM SET recovery_min_apply_delay = '1h'"); err != nil {
		t.Fatal(err)
	}
	if err := r.eu.Exec(ctx, "SELECT pg_reload_conf()"); err != nil {
		t.Fatal(err)
	}
	// A commit pg-eu will not apply for an hour (it still receives it, and streams).
	if err := r.primary.Exec(ctx, "CREATE TABLE sw_late (id int); INSERT INTO sw_late VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	code, out := r.switchover(t, "pg-eu", "--timeout", "3s")
	t.Logf("regent switchover:\n%s", out)
	if code == 0 {
		t.Fatal("the switchover to a target that cannot catch up succeeded")
	}
	ev := r.lastEvent()
	if ev.GetStep() != regentv1.FailoverStep_FAILOVER_STEP_ABORTED || !strings.Contains(ev.GetAbortReason(), "did not replay") ||
		!strings.Contains(ev.GetAbortReason(), "takes writes again") {
		t.Fatalf("event: step %v reason %q", ev.GetStep(), ev.GetAbortReason())
	}
	if !strings.Contains(out, "aborted") {
		t.Errorf("the CLI did not say it aborted: %q", out)
	}
	if c := r.cluster(); c.GetPrimary() != "pg-us" || c.GetLeaseEpoch() != 1 {
		t.Errorf("after the abort: primary %s, epoch %d", c.GetPrimary(), c.GetLeaseEpoch())
	}
	// The old primary takes writes again (the keeper lifted its fence), and never stopped.
	witnesstest.Eventually(t, wait, "pg-us writable again", func() bool {
		return r.primary.Exec(ctx, "INSERT INTO sw_late VALUES (2)") == nil
	})
	if inRecovery(t, r.primary) || inRecovery(t, r.eu) == false {
		t.Error("a node changed role in an aborted switchover")
	}
	if !r.primary.Running() {
		t.Error("the old primary was restarted (demoted) although the target never caught up")
	}
}

// TestSwitchoverResumedByANewLeader stops the witnesses' leader in the middle of a switchover
// under a write load, once the old primary is going down (being demoted), before the step
// is committed: the next leader runs the switchover's first step again (the keeper answers
// the repeated DEMOTE from its record) and finishes it with nothing lost.
func TestSwitchoverResumedByANewLeader(t *testing.T) {
	r := startSwitchoverRig(t)
	leader := r.c.WaitLeader(wait)
	w := startWriter(t, r, r.c.Follower(leader))
	w.waitAcks(t, "pg-us", 50)
	ctx := witnesstest.Context(t, 3*wait)
	resp, err := r.c.Client(leader).Switchover(ctx, &regentv1.SwitchoverRequest{Cluster: "orders", To: "pg-eu", Reason: "leader loss drill"})
	if err != nil {
		t.Fatal(err)
	}
	id := resp.GetEvent().GetId()
	// The old primary stops being a writable primary when the demotion shuts it down.
	witnesstest.Eventually(t, wait, "pg-us being demoted", func() bool {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		st := r.keepers["pg-us"].Status(sctx, false)
		return !st.PostmasterRunning || st.InRecovery || r.event(id).GetStep() != regentv1.FailoverStep_FAILOVER_STEP_DECIDED
	})
	t.Logf("stopping the leader at step %s", r.event(id).GetStep())
	r.c.StopNode(leader)
	var ev *regentv1.FailoverEvent
	witnesstest.Eventually(t, 2*wait, "the switchover to finish under the next leader", func() bool {
		ev = r.event(id)
		return ev.GetStep() == regentv1.FailoverStep_FAILOVER_STEP_COMPLETED || ev.GetStep() == regentv1.FailoverStep_FAILOVER_STEP_ABORTED
	})
	t.Logf("event: %s; notes: %s", ev.GetStep(), strings.Join(ev.GetNotes(), " | "))
	if ev.GetStep() != regentv1.FailoverStep_FAILOVER_STEP_COMPLETED || ev.GetDataLossBytes() != 0 || !ev.GetDataLossExact() || ev.GetFinalLsn() == 0 {
		t.Fatalf("switchover after the leader loss: step %s, loss %v exact %v final %X (%s)", ev.GetStep(), ev.DataLossBytes, ev.GetDataLossExact(), ev.GetFinalLsn(), ev.GetAbortReason())
	}
	w.waitAcks(t, "pg-eu", 50)
	acks := w.snapshot()
	checkAllAcked(t, r.eu, acks)
	if err := pgops.WaitStreamingFrom(ctx, target(&failoverRig{observeRig: r.observeRig}, r.primary), r.eu.Host, uint16(r.eu.Port)); err != nil {
		t.Errorf("the old primary does not stream from the new one: %v", err)
	}
	if st := r.keepers["pg-us"].Status(ctx, false); st.LastRejoin != "" || !st.InRecovery || st.Fenced {
		t.Errorf("old primary's keeper: rejoin %q, in recovery %v, fenced %v", st.LastRejoin, st.InRecovery, st.Fenced)
	}
	gap, _, _ := longestGap(acks, time.Time{})
	t.Logf("write unavailability with a leader election in the middle: %v", gap.Round(time.Millisecond))
}
