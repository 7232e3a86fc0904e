// Command rto measures regent's recovery time after the primary dies, in the local lab
// (package lab: three witnesses, PostgreSQL primary + two standbys, named).
//
//	go run ./bench/rto [-case postmaster|host|norestart] [-n 10] [-json out.json] [-rate 200] [-timeout 60s] [-v]
//
// Each trial starts a fresh lab, runs a write load (one row per transaction), makes the
// primary fail at T0 and measures from T0. The case says how it fails:
//
//   - postmaster (default): no keepers; the primary's postmaster gets SIGKILL. Nothing can
//     confirm a fence, so the saga revokes the lease and waits it out.
//   - host: a keeper beside each node; the primary's keeper and postmaster are killed together
//     (Keeper.Kill and SIGKILL), as the loss of its host would. The saga finds no keeper and
//     no server, revokes the lease, and waits lease_ttl × (1 + drift) from the revokers' last
//     grants (fencing.GrantBound), most of which has passed by the time it decides.
//   - norestart: keepers; the primary's postgresql.conf is broken and its postmaster gets
//     SIGKILL. Its keeper fails to restart it, stops reporting a restart, and confirms the
//     leader's STOP: the fence (method keeper) without any lease wait.
//
// Measured from T0:
//
//   - detected: the majority's unreachable votes on the old primary (the vote's since);
//   - decision: the failover event's started_at;
//   - fenced, promoted, repointed, published, completed: the saga's step times;
//   - first write: the first write acknowledged by a node other than the old primary, as the
//     client saw it (the writer tries each node in turn once its primary fails);
//   - dns: named first answering the new primary's address (polled every 10 ms).
//
// The step times come from the leader's clock, the rest from this process's; the lab runs its
// witnesses in this process, so they are one clock. A trial that has not finished 60 s (-timeout)
// after the kill is recorded as failed. The summary gives min/median/p90/max of each metric and
// the case's floor: postmaster, down_after + lease_ttl × (1 + drift) (a dead postmaster confirms
// no fence, so the saga waits out the lease, with the clock-drift margin of
// fencing.DefaultDrift, after deciding); host, max(down_after, lease_ttl × (1 + drift)) (the
// wait counts from the last grants, about T0); norestart, down_after. The goal is a median
// first write within 1 s of the floor for postmaster and within 3 s of T0 for the keeper cases.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/regentdb/regent/dnspub"
	"github.com/regentdb/regent/fencing"
	"github.com/regentdb/regent/lab"
	"github.com/regentdb/regent/pgtest"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
	"github.com/regentdb/regent/spec"
)

// Metric names, in the order they are printed.
const (
	mDetected   = "detected"
	mDecision   = "decision"
	mFenced     = "fenced"
	mPromoted   = "promoted"
	mFirstWrite = "first_write"
	mRepointed  = "repointed"
	mPublished  = "published"
	mDNS        = "dns"
	mCompleted  = "completed"
)

var metrics = []string{mDetected, mDecision, mFenced, mPromoted, mFirstWrite, mRepointed, mPublished, mDNS, mCompleted}

// Trial is one kill of the primary and what followed, times in milliseconds after the kill.
type Trial struct {
	Trial int    `json:"trial"`
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	// From and To are the old and the new primary; FirstWriteNode took the first write.
	From           string `json:"from"`
	To             string `json:"to,omitempty"`
	FirstWriteNode string `json:"first_write_node,omitempty"`
	FenceMethod    string `json:"fence_method,omitempty"`
	// Ms maps each metric to milliseconds after the kill; a metric not reached is absent.
	Ms map[string]float64 `json:"ms"`
	// AckedBeforeKill is how many writes the old primary acknowledged before the kill, and
	// LostBeforeKill how many of those the new primary lacks (asynchronous replication).
	AckedBeforeKill int `json:"acked_before_kill"`
	LostBeforeKill  int `json:"lost_before_kill"`
	// AckedAfterKill counts writes the old primary's orphaned backends still acknowledged
	// after its postmaster was killed (a backend finishes the statement it is running), and
	// LostAfterKill how many of those the new primary lacks.
	AckedAfterKill int `json:"acked_after_kill"`
	LostAfterKill  int `json:"lost_after_kill"`
	// DataLossBytes is the event's estimate of the data lost.
	DataLossBytes int64 `json:"data_loss_bytes"`
}

// Stat summarises one metric over the successful trials, in milliseconds.
type Stat struct {
	N      int     `json:"n"`
	Min    float64 `json:"min"`
	Median float64 `json:"median"`
	P90    float64 `json:"p90"`
	Max    float64 `json:"max"`
}

// Report is what -json writes.
type Report struct {
	Command      string          `json:"command"`
	Case         string          `json:"case"`
	Started      time.Time       `json:"started"`
	GoVersion    string          `json:"go_version"`
	CPUs         int             `json:"cpus"`
	Postgres     int             `json:"postgres_major"`
	DNS          bool            `json:"dns"`
	WriteRate    float64         `json:"write_rate"`
	Policy       map[string]any  `json:"policy"`
	FloorMs      float64         `json:"floor_ms"`
	GoalMs       float64         `json:"goal_ms"`
	GoalMet      bool            `json:"goal_met"`
	Trials       []Trial         `json:"trials"`
	Summary      map[string]Stat `json:"summary"`
	FailedTrials int             `json:"failed_trials"`
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("rto", flag.ContinueOnError)
	fs.SetOutput(stderr)
	kind := fs.String("case", casePostmaster, "how the primary fails: postmaster (SIGKILL, no keepers), host (keepers; the primary's keeper and postmaster killed together) or norestart (keepers; postgresql.conf broken, postmaster SIGKILL, the keeper confirms the fence)")
	n := fs.Int("n", 10, "number of trials (a fresh lab each)")
	jsonPath := fs.String("json", "", "also write the trials and the summary to this JSON file")
	rate := fs.Float64("rate", 200, "write load in rows per second, one row per transaction (also the client's retry pace during the failover)")
	timeout := fs.Duration("timeout", 60*time.Second, "a trial not finished this long after the kill is recorded as failed")
	verbose := fs.Bool("v", false, "print each trial's progress on stderr")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *n < 1 || *rate <= 0 || *timeout <= 0 {
		fmt.Fprintln(stderr, "rto: -n, -rate and -timeout must be positive")
		return 2
	}
	if !slices.Contains(cases, *kind) {
		fmt.Fprintf(stderr, "rto: -case %q: want one of %s\n", *kind, strings.Join(cases, ", "))
		return 2
	}
	if _, err := pgtest.FindBin(); err != nil {
		fmt.Fprintf(stderr, "rto: %v (install PostgreSQL: apt-get install postgresql)\n", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	progress := io.Discard
	if *verbose {
		progress = stderr
	}
	rep := Report{Command: "go run ./bench/rto " + strings.Join(args, " "), Case: *kind, Started: time.Now().UTC(),
		GoVersion: runtime.Version(), CPUs: runtime.NumCPU(), WriteRate: *rate}
	for i := 1; i <= *n && ctx.Err() == nil; i++ {
		fmt.Fprintf(stderr, "rto: trial %d/%d…\n", i, *n)
		tr, info := trial(ctx, *kind, i, *rate, *timeout, progress)
		if info != nil {
			rep.Postgres, rep.DNS, rep.Policy, rep.FloorMs = info.pgMajor, info.dns, info.policy, info.floorMs
		}
		if !tr.OK {
			fmt.Fprintf(stderr, "rto: trial %d failed: %s\n", i, tr.Error)
		}
		rep.Trials = append(rep.Trials, tr)
	}
	if ctx.Err() != nil {
		fmt.Fprintln(stderr, "rto: interrupted; reporting the trials done")
	}
	rep.Summary = summarise(rep.Trials)
	for _, t := range rep.Trials {
		if !t.OK {
			rep.FailedTrials++
		}
	}
	rep.GoalMs = rep.FloorMs + 1000
	if *kind != casePostmaster {
		rep.GoalMs = 3000
	}
	if s, ok := rep.Summary[mFirstWrite]; ok && s.N > 0 {
		rep.GoalMet = s.Median <= rep.GoalMs
	}
	printReport(stdout, rep)
	if *jsonPath != "" {
		b, _ := json.MarshalIndent(rep, "", "  ")
		if err := os.WriteFile(*jsonPath, append(b, '\n'), 0o644); err != nil {
			fmt.Fprintf(stderr, "rto: write %s: %v\n", *jsonPath, err)
			return 1
		}
	}
	if len(rep.Trials) == 0 || rep.FailedTrials == len(rep.Trials) {
		return 1
	}
	return 0
}

// The failure cases (-case).
const (
	casePostmaster = "postmaster"
	caseHost       = "host"
	caseNoRestart  = "norestart"
)

var cases = []string{casePostmaster, caseHost, caseNoRestart}

// floorMs is the least time after T0 by which a case can have a new primary, for a policy.
func floorMs(kind string, pol *regentv1.Policy) float64 {
	downAfter := float64(pol.GetDownAfterMs())
	lease := float64(pol.GetLeaseTtlMs()) * (1 + fencing.DefaultDrift)
	switch kind {
	case caseHost:
		return max(downAfter, lease)
	case caseNoRestart:
		return downAfter
	}
	return downAfter + lease
}

// labInfo is what the report says about the lab the trials ran in.
type labInfo struct {
	pgMajor int
	dns     bool
	policy  map[string]any
	floorMs float64
}

// trial runs one fresh lab, kills its primary under load and measures the failover.
func trial(ctx context.Context, kind string, num int, rate float64, timeout time.Duration, progress io.Writer) (Trial, *labInfo) {
	tr := Trial{Trial: num, Ms: map[string]float64{}}
	fail := func(format string, args ...any) (Trial, *labInfo) {
		tr.Error = fmt.Sprintf(format, args...)
		return tr, nil
	}
	startCtx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	l, err := lab.Start(startCtx, lab.Options{Logger: slog.New(slog.DiscardHandler), Progress: progress, Keepers: kind != casePostmaster})
	if err != nil {
		return fail("start the lab: %v", err)
	}
	defer l.Stop()
	pol := spec.WithDefaults(l.Spec.GetPolicy())
	floor := floorMs(kind, pol)
	info := &labInfo{pgMajor: l.Bench.MajorVersion(), dns: l.DNS != nil, floorMs: floor,
		policy: map[string]any{"probe_interval_ms": pol.GetProbeIntervalMs(), "probe_timeout_ms": pol.GetProbeTimeoutMs(),
			"down_after_ms": pol.GetDownAfterMs(), "lease_ttl_ms": pol.GetLeaseTtlMs(), "fence_methods": pol.GetFenceMethods(),
			"fence_fallback": pol.GetFenceFallback(), "drift": fencing.DefaultDrift}}
	old := l.Primary()
	tr.From = old.Name

	w, err := startWriter(ctx, l.Nodes, rate)
	if err != nil {
		tr.Error = err.Error()
		return tr, info
	}
	defer w.stop()
	warm, wcancel := context.WithTimeout(ctx, 30*time.Second)
	err = w.waitAcked(warm, old.Name, 20)
	wcancel()
	if err != nil {
		tr.Error = fmt.Sprintf("write load on %s: %v", old.Name, err)
		return tr, info
	}

	// T0: the kill. Everything after is bounded by timeout.
	after := l.LastEventID()
	var k lab.Killed
	switch kind {
	case caseHost:
		k, err = l.KillPrimary()
	case caseNoRestart:
		k, err = breakRestart(l)
	default:
		k, err = l.KillPrimary()
	}
	t0 := k.At
	if err != nil {
		tr.Error = err.Error()
		return tr, info
	}
	fmt.Fprintf(progress, "rto: killed %s (pid %d)\n", k.Node.Name, k.PID)
	tctx, tcancel := context.WithDeadline(ctx, t0.Add(timeout))
	defer tcancel()
	var dnsAt time.Time
	var dnsAnswer string
	var dnsWG sync.WaitGroup
	if l.DNS != nil {
		dnsWG.Add(1)
		go func() {
			defer dnsWG.Done()
			dnsAt, dnsAnswer = pollDNS(tctx, l.DNS.Addr(), old.Server.Host)
		}()
	}
	ev, err := l.WaitFailover(tctx, after)
	if err != nil {
		tcancel()
		dnsWG.Wait()
		tr.Error = fmt.Sprintf("no failover finished within %v of the kill: %v", timeout, err)
		return tr, info
	}
	tr.To, tr.FenceMethod, tr.DataLossBytes = ev.GetToNode(), ev.GetFenceMethod(), ev.GetDataLossBytes()
	if ev.GetStep() != regentv1.FailoverStep_FAILOVER_STEP_COMPLETED {
		tcancel()
		dnsWG.Wait()
		tr.Error = fmt.Sprintf("failover %d aborted: %s", ev.GetId(), ev.GetAbortReason())
		return tr, info
	}
	ms := func(at time.Time) float64 { return float64(at.Sub(t0).Microseconds()) / 1000 }
	tr.Ms[mDecision] = ms(ev.GetStartedAt().AsTime())
	for _, st := range ev.GetSteps() {
		switch st.GetStep() {
		case regentv1.FailoverStep_FAILOVER_STEP_FENCED:
			tr.Ms[mFenced] = ms(st.GetAt().AsTime())
		case regentv1.FailoverStep_FAILOVER_STEP_PROMOTED:
			tr.Ms[mPromoted] = ms(st.GetAt().AsTime())
		case regentv1.FailoverStep_FAILOVER_STEP_REPOINTED:
			tr.Ms[mRepointed] = ms(st.GetAt().AsTime())
		case regentv1.FailoverStep_FAILOVER_STEP_PUBLISHED:
			tr.Ms[mPublished] = ms(st.GetAt().AsTime())
		case regentv1.FailoverStep_FAILOVER_STEP_COMPLETED:
			tr.Ms[mCompleted] = ms(st.GetAt().AsTime())
		}
	}
	if at, ok := majorityDown(l, old.Name); ok {
		tr.Ms[mDetected] = ms(at)
	}
	first, err := w.waitFirstWrite(tctx, t0, old.Name)
	if err != nil {
		tcancel()
		dnsWG.Wait()
		tr.Error = fmt.Sprintf("no write acknowledged by another node within %v of the kill: %v", timeout, err)
		return tr, info
	}
	tr.Ms[mFirstWrite], tr.FirstWriteNode = ms(first.at), first.node
	newHost := l.Node(ev.GetToNode()).Server.Host
	if l.DNS != nil {
		dnsWG.Wait()
		switch {
		case dnsAt.IsZero():
			tr.Error = fmt.Sprintf("named did not answer a new address within %v of the kill", timeout)
			return tr, info
		case dnsAnswer != newHost:
			tr.Error = fmt.Sprintf("named answered %s, but the new primary %s is %s", dnsAnswer, ev.GetToNode(), newHost)
			return tr, info
		}
		tr.Ms[mDNS] = ms(dnsAt)
	}
	w.stop()
	if err := w.countOld(tctx, &tr, t0, old.Name, l.Node(ev.GetToNode()).Server); err != nil {
		tr.Error = fmt.Sprintf("checking the acknowledged rows on %s: %v", ev.GetToNode(), err)
		return tr, info
	}
	if first.node != ev.GetToNode() {
		tr.Error = fmt.Sprintf("the first write after the kill went to %s, but regent promoted %s", first.node, ev.GetToNode())
		return tr, info
	}
	tr.OK = true
	return tr, info
}

// majorityDown returns when a majority of the witnesses' votes on node turned unreachable
// (the majority-th earliest vote's since).
func majorityDown(l *lab.Lab, node string) (time.Time, bool) {
	for _, c := range l.State().GetClusters() {
		if c.GetName() != lab.ClusterName {
			continue
		}
		for _, ns := range c.GetNodeStatus() {
			if ns.GetName() != node {
				continue
			}
			var since []time.Time
			for _, v := range ns.GetVotes() {
				if !v.GetReachable() && v.GetSince() != nil {
					since = append(since, v.GetSince().AsTime())
				}
			}
			need := len(l.Agents)/2 + 1
			if len(since) < need {
				return time.Time{}, false
			}
			slices.SortFunc(since, func(a, b time.Time) int { return a.Compare(b) })
			return since[need-1], true
		}
	}
	return time.Time{}, false
}

// pollDNS asks named every 10 ms where the record points, and returns when it first answers a
// single address other than old.
func pollDNS(ctx context.Context, server, old string) (time.Time, string) {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		qctx, cancel := context.WithTimeout(ctx, time.Second)
		addrs, _, err := dnspub.Lookup(qctx, server, lab.Record)
		cancel()
		if err == nil && len(addrs) == 1 && addrs[0] != old {
			return time.Now(), addrs[0]
		}
		select {
		case <-ctx.Done():
			return time.Time{}, ""
		case <-tick.C:
		}
	}
}

// ack is one acknowledged write.
type ack struct {
	at   time.Time
	node string
	id   int64
}

// writer inserts one row per transaction, at a steady pace, into the node that last took a
// write; when it fails, it tries every node in turn within the same beat, as a client with a
// list of hosts would (libpq's target_session_attrs=read-write does the same).
type writer struct {
	nodes  []lab.Node
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once

	mu   sync.Mutex
	acks []ack
	cond chan struct{} // closed and replaced on each ack
}

const table = "rto_load"

func startWriter(ctx context.Context, nodes []lab.Node, rate float64) (*writer, error) {
	if err := nodes[0].Server.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+table+` (
		id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp(), payload text)`); err != nil {
		return nil, fmt.Errorf("create the load table on %s: %w", nodes[0].Name, err)
	}
	wctx, cancel := context.WithCancel(ctx)
	w := &writer{nodes: nodes, cancel: cancel, done: make(chan struct{}), cond: make(chan struct{})}
	go w.run(wctx, time.Duration(float64(time.Second)/rate))
	return w, nil
}

func (w *writer) run(ctx context.Context, every time.Duration) {
	defer close(w.done)
	conns := make([]*pgx.Conn, len(w.nodes))
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close(context.Background())
			}
		}
	}()
	tick := time.NewTicker(every)
	defer tick.Stop()
	cur := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		for try := range len(w.nodes) {
			i := (cur + try) % len(w.nodes)
			id, err := w.insert(ctx, conns, i)
			if err != nil {
				continue
			}
			cur = i
			w.mu.Lock()
			w.acks = append(w.acks, ack{at: time.Now(), node: w.nodes[i].Name, id: id})
			close(w.cond)
			w.cond = make(chan struct{})
			w.mu.Unlock()
			break
		}
	}
}

// insert writes one row on node i, connecting first when needed; a broken connection is
// dropped so the next attempt reconnects.
func (w *writer) insert(ctx context.Context, conns []*pgx.Conn, i int) (int64, error) {
	actx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	if conns[i] == nil {
		c, err := pgx.Connect(actx, w.nodes[i].Server.ConnString())
		if err != nil {
			return 0, err
		}
		conns[i] = c
	}
	var id int64
	err := conns[i].QueryRow(actx, `INSERT INTO `+table+` (payload) VALUES ('x') RETURNING id`).Scan(&id)
	if err != nil && (conns[i].IsClosed() || actx.Err() != nil) {
		conns[i].Close(context.Background())
		conns[i] = nil
	}
	return id, err
}

func (w *writer) stop() {
	w.once.Do(func() {
		w.cancel()
		<-w.done
	})
}

// waitFor waits until cond holds over the acknowledged writes.
func (w *writer) waitFor(ctx context.Context, cond func([]ack) bool) error {
	for {
		w.mu.Lock()
		ok, ch := cond(w.acks), w.cond
		w.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-w.done:
			return errors.New("the writer stopped")
		case <-ch:
		}
	}
}

func (w *writer) waitAcked(ctx context.Context, node string, n int) error {
	return w.waitFor(ctx, func(acks []ack) bool {
		c := 0
		for _, a := range acks {
			if a.node == node {
				c++
			}
		}
		return c >= n
	})
}

// waitFirstWrite returns the first write after t0 acknowledged by a node other than old.
func (w *writer) waitFirstWrite(ctx context.Context, t0 time.Time, old string) (ack, error) {
	var first ack
	err := w.waitFor(ctx, func(acks []ack) bool {
		for _, a := range acks {
			if a.at.After(t0) && a.node != old {
				first = a
				return true
			}
		}
		return false
	})
	return first, err
}

// countOld counts the old primary's acknowledged writes before and after t0, and those of
// them that the new primary s lacks.
func (w *writer) countOld(ctx context.Context, tr *Trial, t0 time.Time, old string, s *pgtest.Server) error {
	rows, err := s.Query(ctx, `SELECT id FROM `+table)
	if err != nil {
		return err
	}
	have := make(map[int64]bool, len(rows))
	for _, r := range rows {
		if id, ok := r[0].(int64); ok {
			have[id] = true
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, a := range w.acks {
		if a.node != old {
			continue
		}
		if a.at.After(t0) {
			tr.AckedAfterKill++
			if !have[a.id] {
				tr.LostAfterKill++
			}
		} else {
			tr.AckedBeforeKill++
			if !have[a.id] {
				tr.LostBeforeKill++
			}
		}
	}
	return nil
}

// summarise computes each metric's statistics over the successful trials.
func summarise(trials []Trial) map[string]Stat {
	out := map[string]Stat{}
	for _, m := range metrics {
		var v []float64
		for _, t := range trials {
			if x, ok := t.Ms[m]; ok && t.OK {
				v = append(v, x)
			}
		}
		if len(v) > 0 {
			out[m] = stat(v)
		}
	}
	return out
}

// stat returns min, median (the mean of the middle two for an even count), p90 (nearest rank)
// and max.
func stat(v []float64) Stat {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	med := s[n/2]
	if n%2 == 0 {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	rank := int(math.Ceil(0.9*float64(n))) - 1
	return Stat{N: n, Min: s[0], Median: med, P90: s[rank], Max: s[n-1]}
}

func secs(ms float64) string { return fmt.Sprintf("%.2fs", ms/1000) }

func printReport(w io.Writer, rep Report) {
	if rep.Case == "" {
		rep.Case = casePostmaster
	}
	what := map[string]string{
		casePostmaster: "kill -9 of the primary's postmaster (no keepers)",
		caseHost:       "host loss: the primary's keeper and postmaster killed together",
		caseNoRestart:  "the primary's postmaster killed -9 and unable to restart, its keeper alive",
	}[rep.Case]
	fmt.Fprintf(w, "regent failover RTO: %d trials (%d failed), %s, under %g writes/s; PostgreSQL %d; DNS %v\n",
		len(rep.Trials), rep.FailedTrials, what, rep.WriteRate, rep.Postgres, rep.DNS)
	fmt.Fprintf(w, "policy: %v\n\n", rep.Policy)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprint(tw, "TRIAL\tFROM→TO\t")
	for _, m := range metrics {
		fmt.Fprintf(tw, "%s\t", strings.ToUpper(m))
	}
	fmt.Fprint(tw, "FENCE\tLOST(BEFORE/AFTER KILL)\tEST_LOSS\tRESULT\n")
	for _, t := range rep.Trials {
		fmt.Fprintf(tw, "%d\t%s→%s\t", t.Trial, t.From, t.To)
		for _, m := range metrics {
			if x, ok := t.Ms[m]; ok {
				fmt.Fprintf(tw, "%s\t", secs(x))
			} else {
				fmt.Fprint(tw, "-\t")
			}
		}
		res := "ok"
		if !t.OK {
			res = "FAILED: " + t.Error
		}
		fmt.Fprintf(tw, "%s\t%d of %d / %d of %d\t%d B\t%s\n", t.FenceMethod, t.LostBeforeKill, t.AckedBeforeKill, t.LostAfterKill, t.AckedAfterKill, t.DataLossBytes, res)
	}
	tw.Flush()
	fmt.Fprintln(w, "\nTimes after the kill (successful trials):")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprint(tw, "METRIC\tN\tMIN\tMEDIAN\tP90\tMAX\n")
	for _, m := range metrics {
		if s, ok := rep.Summary[m]; ok {
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\n", m, s.N, secs(s.Min), secs(s.Median), secs(s.P90), secs(s.Max))
		}
	}
	tw.Flush()
	floorWhat := map[string]string{casePostmaster: "down_after + lease_ttl × (1 + drift)", caseHost: "max(down_after, lease_ttl × (1 + drift))", caseNoRestart: "down_after"}[rep.Case]
	fmt.Fprintf(w, "\nfloor (%s): %s; goal: median first write ≤ %s: ", floorWhat, secs(rep.FloorMs), secs(rep.GoalMs))
	if s, ok := rep.Summary[mFirstWrite]; ok {
		verdict := "NOT met"
		if rep.GoalMet {
			verdict = "met"
		}
		fmt.Fprintf(w, "%s (median %s, %s over the floor)\n", verdict, secs(s.Median), secs(s.Median-rep.FloorMs))
	} else {
		fmt.Fprintln(w, "no successful trial")
	}
	printBreakdown(w, rep)
}

// printBreakdown splits the median first write into its stages, to show where time goes.
func printBreakdown(w io.Writer, rep Report) {
	downAfter, _ := rep.Policy["down_after_ms"].(int64)
	leaseMs, _ := rep.Policy["lease_ttl_ms"].(int64)
	drift, _ := rep.Policy["drift"].(float64)
	lease := float64(leaseMs) * (1 + drift)
	type stage struct {
		name     string
		from, to string
		minus    float64
	}
	fenceStage := stage{"decision → fenced, beyond lease_ttl × (1 + drift) (SQL fence attempt, revocation)", mDecision, mFenced, lease}
	switch rep.Case {
	case caseHost:
		fenceStage = stage{"decision → fenced (keeper and SQL refused, revocation, the rest of the wait from the revokers' last grants)", mDecision, mFenced, 0}
	case caseNoRestart:
		fenceStage = stage{"decision → fenced (the keeper's STOP)", mDecision, mFenced, 0}
	}
	stages := []stage{
		{"kill → majority votes down (probe interval, report)", "", mDetected, 0},
		{"votes down → decision, beyond down_after (decision tick)", mDetected, mDecision, float64(downAfter)},
		fenceStage,
		{"fenced → first client write (pg_promote, the client's retry pace)", mFenced, mFirstWrite, 0},
		{"fenced → promoted committed (pg_promote, confirmed write, CHECKPOINT)", mFenced, mPromoted, 0},
		{"promoted → repointed (other standby streams from the new primary)", mPromoted, mRepointed, 0},
		{"repointed → published (DNS update)", mRepointed, mPublished, 0},
		{"published → named answers (client poll)", mPublished, mDNS, 0},
	}
	fmt.Fprintln(w, "\nWhere the time goes (median over successful trials of each stage):")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, s := range stages {
		var v []float64
		for _, t := range rep.Trials {
			to, ok := t.Ms[s.to]
			from, ok2 := t.Ms[s.from]
			if s.from == "" {
				from, ok2 = 0, true
			}
			if t.OK && ok && ok2 {
				v = append(v, to-from-s.minus)
			}
		}
		if len(v) > 0 {
			st := stat(v)
			fmt.Fprintf(tw, "  %s\t%s\t(min %s, max %s)\n", s.name, secs(st.Median), secs(st.Min), secs(st.Max))
		}
	}
	tw.Flush()
}
