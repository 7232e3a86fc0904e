package bench

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/jackc/pgx/v5"
	"go.etcd.io/bbolt"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/regentdb/regent/agent"
	"github.com/regentdb/regent/heartbeat"
	"github.com/regentdb/regent/internal/poll"
	"github.com/regentdb/regent/internal/witnesstest"
	"github.com/regentdb/regent/pgtest"
	"github.com/regentdb/regent/probe"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// Observe benchmark knobs. The probe interval is the default policy's (500 ms): the specs carry
// no policy.
const (
	observeWitnesses     = 3
	observeProbeInterval = 500 * time.Millisecond
	// observeWindow is how long the steady state is measured.
	observeWindow = 25 * time.Second
	// observeRampStep clusters are added at a time, and each step gets observeStepWait to
	// settle (every channel active, every vote reachable).
	observeRampStep = 10
	observeStepWait = 30 * time.Second
	// observeRampBudget bounds the ramp: past it the rest is applied at once.
	observeRampBudget = 5 * time.Minute
	// observeSteadyWait bounds the wait for the whole fleet to settle; a fleet that never gets
	// there is measured anyway (that is the finding).
	observeSteadyWait = time.Minute
	// observeSampleEvery is how often the leader's channels are looked at during the window.
	observeSampleEvery = 2500 * time.Millisecond
	// pgCPUShares is the cpu.shares (cgroup v1; a session's default is 1024) of the cgroup the
	// PostgreSQL servers are moved into, when the benchmark may make one; see isolatePostgres.
	// 2048 lets the three servers take two thirds of the machine when the witnesses want the
	// rest, and any share nobody else wants.
	pgCPUShares = 2048
	// observeNeedsTimeout is the least go test -timeout the benchmark runs under.
	observeNeedsTimeout = 25 * time.Minute
	// clockTicks is USER_HZ, the unit of /proc/<pid>/stat CPU times (100 on every Linux
	// architecture Go supports).
	clockTicks = 100
)

// observeCounts are the fleet sizes measured; REGENT_BENCH_OBSERVE_CLUSTERS (comma-separated)
// overrides them, e.g. to find where a smaller machine saturates.
func observeCounts(b *testing.B) []int {
	v := os.Getenv("REGENT_BENCH_OBSERVE_CLUSTERS")
	if v == "" {
		return []int{50, 100, 1000}
	}
	var out []int
	for _, f := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			b.Fatalf("REGENT_BENCH_OBSERVE_CLUSTERS=%q: %q is not a positive cluster count", v, f)
		}
		out = append(out, n)
	}
	return out
}

// BenchmarkObserve measures the cost of observing a fleet: N clusters of 3 nodes (pg-us, pg-eu,
// pg-ap in three regions), all pointing at one real PostgreSQL primary and its two streaming
// standbys, watched by 3 in-process witnesses (real Raft, gossip and gRPC on loopback) at the
// default probe interval.
//
// Each sub-benchmark first measures one probe on the idle servers, then starts fresh witnesses
// and applies the clusters observeRampStep at a time, each step given time to settle (every
// channel active, every vote reachable); once a step does not settle, the rest is applied at
// once. It then measures a fixed window and reports: CPU per witness (this process's CPU / 3),
// the PostgreSQL servers' CPU and other work on the machine, probe latency p50/p99 (from the
// witnesses' own regent_probe_duration_seconds histograms, failed probes included), probes per
// second achieved and wanted, Raft log entries and bytes per second (read back from a
// follower's log, by command type), elections, heartbeats per second, and how many channels
// stayed active. It runs its measurement once, whatever b.N is. See BENCHMARKS.md.
func BenchmarkObserve(b *testing.B) {
	// It takes about 8 minutes (most of it in the overloaded fleets' bounded waits): under go
	// test's default 10-minute timeout, next to the package's other benchmarks (make bench),
	// it would be killed half way.
	if f := flag.Lookup("test.timeout"); f != nil {
		if d, err := time.ParseDuration(f.Value.String()); err == nil && d > 0 && d < observeNeedsTimeout {
			b.Skipf("BenchmarkObserve takes about 8 minutes; run it alone with -timeout 30m (this run has -timeout %v)", d)
		}
	}
	counts := observeCounts(b)
	most := slicesMax(counts)
	conns, why := maxConnections(most)
	cg := newCPUGroup(b) // before pgtest.Start, so that it is removed after the servers stop
	pg := pgtest.Start(b, pgtest.Options{Standbys: 2, Settings: map[string]string{
		"max_connections": strconv.Itoa(conns),
	}})
	setup := fmt.Sprintf("PostgreSQL %d: 3 servers, max_connections %d (%s); %s", pg.MajorVersion(), conns, why, isolatePostgres(b, pg, cg))
	for _, n := range counts {
		b.Run(fmt.Sprintf("clusters=%d", n), func(b *testing.B) {
			b.Log(setup)
			benchObserve(b, pg, n)
		})
	}
}

// backendMiB is what one PostgreSQL backend holding a probe connection costs in private memory,
// measured with this benchmark (1.7–2.0 MiB on PostgreSQL 15), rounded up.
const backendMiB = 2

// maxConnections sizes each server's max_connections for a fleet of n clusters: 3 witnesses ×
// n kept probe connections, n heartbeat connections on the primary, plus WAL senders, superuser
// slots and the benchmark's own — capped so that the three servers' backends fit in half of
// the memory available now. Past the cap, probes of a full server fail ("too many clients").
func maxConnections(n int) (int, string) {
	want := observeWitnesses*n + n + 50
	availMiB := statusKB("/proc/meminfo", "MemAvailable:") / 1024
	if availMiB == 0 {
		return want, "as the fleet needs"
	}
	limit := max(100, availMiB/2/backendMiB/3)
	if want > limit {
		return limit, fmt.Sprintf("capped from %d so that 3 × %d backends of ~%d MiB fit in half of the %d MiB available", want, limit, backendMiB, availMiB)
	}
	return want, "as the fleet needs"
}

func slicesMax(xs []int) int {
	m := 0
	for _, x := range xs {
		m = max(m, x)
	}
	return m
}

// observeSpec is cluster i: pg-us on the bench's primary, pg-eu and pg-ap on its standbys.
func observeSpec(i int, servers []*pgtest.Server) *regentv1.ClusterSpec {
	sp := &regentv1.ClusterSpec{Name: fmt.Sprintf("c%04d", i), Primary: "pg-us"}
	for j, n := range []struct{ name, region string }{{"pg-us", "us-east"}, {"pg-eu", "eu-west"}, {"pg-ap", "ap-south"}} {
		s := servers[j]
		sp.Nodes = append(sp.Nodes, &regentv1.NodeSpec{Name: n.name, Region: n.region, Host: s.Host, Port: uint32(s.Port)})
	}
	return sp
}

// applySpec applies a spec, retrying for up to a minute while the witnesses have no leader.
func applySpec(ctx context.Context, c regentv1.RegentClient, sp *regentv1.ClusterSpec) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		_, err := c.ApplyCluster(ctx, &regentv1.ApplyClusterRequest{Spec: sp})
		if status.Code(err) != codes.Unavailable || ctx.Err() != nil {
			return err
		}
		select { // retry interval, not synchronisation
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// stopBounded shuts the witnesses down, giving each d. A Shutdown that does not return in
// time is abandoned (the witness is left running until the process exits) so that the
// benchmark ends: under overload, hashicorp/raft's pipeline replication can deadlock and
// Raft's Shutdown then waits forever (see BENCHMARKS.md).
func stopBounded(b *testing.B, c *witnesstest.Cluster, d time.Duration) {
	for i, a := range c.Agents {
		if a == nil {
			continue
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = a.Shutdown()
		}()
		select {
		case <-done:
		case <-time.After(d):
			b.Logf("witness %s did not shut down within %v; abandoning it", c.Configs[i].NodeName, d)
		}
		c.Agents[i] = nil
	}
}

// probeCost is what one probe costs on idle servers.
type probeCost struct {
	n         int
	latency   time.Duration // median, connection kept
	pgCPU     time.Duration // PostgreSQL CPU per probe
	clientCPU time.Duration // this process's CPU per probe (the prober and pgx)
}

// idleProbeCost probes each server 500 times in a row with regent's prober, over a kept
// connection, once the heartbeat table exists (the probe reads it), and measures the cost.
func idleProbeCost(ctx context.Context, b *testing.B, pg *pgtest.Bench, servers []*pgtest.Server, primary *pgx.Conn) probeCost {
	b.Helper()
	if _, err := primary.Exec(ctx, heartbeat.Schema); err != nil {
		b.Fatal(err)
	}
	const each = 500
	p := probe.NewProber(probe.Options{})
	defer p.Close()
	var targets []probe.Target
	for _, s := range servers {
		targets = append(targets, probe.Target{Cluster: "c0000", Node: s.Name, Host: s.Host, Port: uint16(s.Port),
			User: pgtest.SuperUser, Database: "postgres", Password: pg.Password(), SSLMode: "disable"})
	}
	for _, t := range targets { // connect first
		if r := p.Probe(ctx, t); !r.Reachable {
			b.Fatalf("probe %s: %v", t, r.Err)
		}
	}
	cpu := func() (own, server time.Duration) {
		var ru syscall.Rusage
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		for _, s := range servers {
			server += serverCPU(s.PID())
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), server
	}
	own0, server0 := cpu()
	lat := make([]time.Duration, 0, each*len(targets))
	for range each {
		for _, t := range targets {
			r := p.Probe(ctx, t)
			if !r.Reachable {
				b.Fatalf("probe %s: %v", t, r.Err)
			}
			lat = append(lat, r.Latency)
		}
	}
	own1, server1 := cpu()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	n := time.Duration(len(lat))
	return probeCost{n: len(lat), latency: lat[len(lat)/2], pgCPU: (server1 - server0) / n, clientCPU: (own1 - own0) / n}
}

// someLeader returns the index of the witness that is Raft leader, waiting up to 10 s for
// one; without a leader (an overloaded cluster may go a long time without) it returns 0,
// whose applied state is then the one looked at.
func someLeader(c *witnesstest.Cluster) int {
	leader := 0
	poll.Until(10*time.Second, 50*time.Millisecond, func() bool {
		for i, a := range c.Agents {
			if a != nil && a.Store().IsLeader() {
				leader = i
				return true
			}
		}
		return false
	})
	return leader
}

// applyRange applies clusters from..to-1 through client, 8 at a time.
func applyRange(ctx context.Context, client regentv1.RegentClient, servers []*pgtest.Server, from, to int) error {
	next := make(chan int)
	errs := make(chan error, 8)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := applySpec(ctx, client, observeSpec(i, servers)); err != nil {
					errs <- fmt.Errorf("apply c%04d: %w", i, err)
					return
				}
			}
		}()
	}
	var err error
feed:
	for i := from; i < to; i++ {
		select {
		case next <- i:
		case err = <-errs:
			break feed
		}
	}
	close(next)
	wg.Wait()
	close(errs)
	if err != nil {
		return err
	}
	return <-errs // nil when closed empty
}

// waitFleet polls the leader's state until the first n clusters have every channel active and
// every node reachable to every witness, or d passes; it returns the last look and whether
// the fleet got there.
func waitFleet(ctx context.Context, b *testing.B, c *witnesstest.Cluster, n int, d time.Duration) (fleetState, bool) {
	b.Helper()
	deadline := time.Now().Add(d)
	for {
		fl := inspectFleet(c.Agents[someLeader(c)])
		if fl.activeChannels == 2*n && fl.reachableVotes == observeWitnesses*3*n {
			return fl, true
		}
		if time.Now().After(deadline) {
			return fl, false
		}
		select { // poll interval, not synchronisation
		case <-ctx.Done():
			b.Fatal(ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func benchObserve(b *testing.B, pg *pgtest.Bench, n int) {
	servers := pg.Servers()[:3]
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	// The benchmark's own connections, made while the servers are idle.
	pgConns := make([]*pgx.Conn, len(servers))
	for i, s := range servers {
		conn, err := s.Connect(ctx)
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close(context.Background())
		pgConns[i] = conn
	}
	idle := idleProbeCost(ctx, b, pg, servers, pgConns[0])
	c := witnesstest.Start(b, observeWitnesses, witnesstest.Options{})
	defer stopBounded(b, c, time.Minute) // before the test's cleanup, which would wait forever
	c.WaitReady(time.Minute)
	c.WaitMembers(time.Minute)
	client := c.Client(c.WaitLeader(time.Minute))

	// Ramp up: observeRampStep clusters at a time, each step given observeStepWait to settle,
	// as an operator adding clusters would. Once a step does not settle the fleet is past what
	// this machine sustains: the rest is applied at once and given observeSteadyWait.
	step := observeRampStep
	if os.Getenv("REGENT_BENCH_OBSERVE_RAMP") == "0" {
		step = n // a cold start: every cluster at once
	}
	setupStart := time.Now()
	settled, steady := 0, true
	var fl fleetState
	applied := 0
	var rampNote string // why the ramp stopped, if it did (benchmark logs are cut at 10 lines)
	for applied < n {
		k := min(step, n-applied)
		if !steady {
			k = n - applied
		}
		if err := applyRange(ctx, client, servers, applied, applied+k); err != nil {
			// The witnesses cannot take writes: measure what there is.
			rampNote += fmt.Sprintf("; applying clusters %d..%d failed, so the fleet is measured as it is: %v", applied, applied+k-1, err)
			fl, steady = inspectFleet(c.Agents[someLeader(c)]), false
			break
		}
		applied += k
		wait := observeStepWait
		if !steady || applied == n {
			wait = observeSteadyWait
		}
		fl, steady = waitFleet(ctx, b, c, applied, wait)
		if steady {
			settled = applied
			if applied < n && time.Since(setupStart) > observeRampBudget {
				rampNote += fmt.Sprintf("; ramp budget %v spent at %d clusters, the rest applied at once", observeRampBudget, applied)
				steady = false
			}
		} else {
			rampNote += fmt.Sprintf("; %d clusters not settled after %v (%d/%d channels active, %d/%d votes reachable)",
				applied, wait, fl.activeChannels, 2*applied, fl.reachableVotes, observeWitnesses*3*applied)
		}
	}
	setup := time.Since(setupStart)
	// A failed apply may have landed some of its clusters: count what the state holds.
	applied = inspectFleet(c.Agents[someLeader(c)]).clusters

	// The window.
	b.ResetTimer()
	start := takeSample(ctx, b, c, servers, pgConns[0])
	minActive, minReachable := fl.activeChannels, fl.reachableVotes
	tick := time.NewTicker(observeSampleEvery)
	end := time.NewTimer(observeWindow)
window:
	for {
		select {
		case <-ctx.Done():
			b.Fatal(ctx.Err())
		case <-tick.C:
			f := inspectFleet(c.Agents[someLeader(c)])
			minActive, minReachable = min(minActive, f.activeChannels), min(minReachable, f.reachableVotes)
		case <-end.C:
			break window
		}
	}
	tick.Stop()
	stop := takeSample(ctx, b, c, servers, pgConns[0])
	b.StopTimer()
	leader := someLeader(c)
	fl = inspectFleet(c.Agents[leader])
	minActive, minReachable = min(minActive, fl.activeChannels), min(minReachable, fl.reachableVotes)
	conns := probeConnections(ctx, b, pgConns)

	secs := stop.at.Sub(start.at).Seconds()
	cpu := (stop.cpu - start.cpu).Seconds() / secs
	var pgCPU float64
	pgCPUs := make([]float64, len(servers))
	for i := range servers {
		pgCPUs[i] = (stop.pgCPU[i] - start.pgCPU[i]).Seconds() / secs
		pgCPU += pgCPUs[i]
	}
	h := stop.hist.sub(start.hist)
	probes := h.total() / secs
	wanted := float64(observeWitnesses*3*applied) * float64(time.Second) / float64(observeProbeInterval)
	entries := float64(stop.lastIndex-start.lastIndex) / secs
	beats := float64(stop.heartbeats-start.heartbeats) / secs
	p50, p99 := h.quantile(0.50), h.quantile(0.99)
	okShare := 100.0
	if h.total() > 0 {
		okShare = 100 * h.ok / h.total()
	}

	b.ReportMetric(cpu/observeWitnesses, "cores/witness")
	b.ReportMetric(pgCPU, "pg-cores")
	if start.scrapeFailed || stop.scrapeFailed {
		p50, p99, probes, okShare = math.NaN(), math.NaN(), math.NaN(), math.NaN()
	}
	b.ReportMetric(p50*1000, "probe-p50-ms")
	b.ReportMetric(p99*1000, "probe-p99-ms")
	b.ReportMetric(probes, "probes/s")
	b.ReportMetric(wanted, "probes-wanted/s")
	b.ReportMetric(okShare, "probes-ok-%")
	b.ReportMetric(entries, "entries/s")
	b.ReportMetric(float64(stop.term-start.term), "elections")
	b.ReportMetric(beats, "heartbeats/s")
	b.ReportMetric(100*float64(minActive)/float64(max(2*applied, 1)), "min-active-%")
	b.ReportMetric(float64(applied), "applied-clusters")
	b.ReportMetric(float64(settled), "settled-clusters")
	b.ReportMetric(float64(fl.failovers), "failovers")
	steadyMetric := 0.0
	if steady {
		steadyMetric = 1
	}
	b.ReportMetric(steadyMetric, "steady")
	b.ReportMetric(float64(idle.latency.Microseconds()), "idle-probe-µs")
	b.ReportMetric(float64(idle.pgCPU.Microseconds()), "idle-probe-pg-µs")
	b.ReportMetric(0, "ns/op") // the window is fixed: time per op means nothing here

	var load string
	if raw, err := os.ReadFile("/proc/loadavg"); err == nil {
		load = strings.Join(strings.Fields(string(raw))[:3], " ")
	}
	b.Logf("clusters=%d: setup (ramp by %d) took %v%s; %d clusters applied; largest fleet that settled: %d clusters; steady at the window: %v; window %.1fs; load average %s",
		n, step, setup.Round(time.Millisecond), rampNote, applied, settled, steady, secs, load)
	b.Logf("  one probe on idle servers (before the witnesses start; %d sequential probes): p50 %v, %v of PostgreSQL CPU, %v of client CPU",
		idle.n, idle.latency, idle.pgCPU, idle.clientCPU)
	busy := (stop.machine - start.machine).Seconds() / secs
	b.ReportMetric(busy-cpu-pgCPU, "other-cores")
	pss, private, procs := pgMemory(servers)
	b.Logf("  CPU: machine %.3f cores busy of %d: witness process %.3f (%.3f per witness), PostgreSQL %.3f (primary %.3f, standby1 %.3f, standby2 %.3f), other work %.3f",
		busy, runtime.NumCPU(), cpu, cpu/observeWitnesses, pgCPU, pgCPUs[0], pgCPUs[1], pgCPUs[2], busy-cpu-pgCPU)
	b.Logf("  probes: %.0f/s of %.0f/s wanted (%.1f%%), %.2f%% ok; latency p50 %.2f ms, p90 %.2f ms, p99 %.2f ms (histogram estimate); failures by class: %v",
		probes, wanted, 100*probes/wanted, okShare, p50*1000, h.quantile(0.90)*1000, p99*1000, h.failures())
	b.Logf("  kept connections: %v (want %d probe connections per server, %d heartbeat on the primary); memory: witness process RSS %d MiB, PostgreSQL %d processes, PSS %d MiB, private %d MiB",
		conns, observeWitnesses*applied, applied, rssMiB(), procs, pss, private)
	// The entries' make-up, read from a follower's log once it is stopped.
	f := c.Follower(leader)
	path := filepath.Join(c.Configs[f].DataDir, "raft.db")
	stopBounded(b, c, time.Minute)
	kinds, logBytes := readLog(b, path, start.lastIndex, stop.lastIndex)
	b.ReportMetric(float64(logBytes)/secs, "log-B/s")
	b.Logf("  raft: %.2f entries/s (%d in %.1fs), %.0f bytes/s of entry data; by kind %v; %d elections in the window (term %d → %d); FSM state %d KiB",
		entries, stop.lastIndex-start.lastIndex, secs, float64(logBytes)/secs, kinds, stop.term-start.term, start.term, stop.term, fl.stateBytes/1024)
	b.Logf("  heartbeats %.1f/s of %d/s wanted; channels active %d/%d at the end, %d at least; reachable votes %d/%d at the end, %d at least; max lag %ds; %d failover events; clusters whose primary looks down, by refusal: %v",
		beats, applied, fl.activeChannels, 2*applied, minActive, fl.reachableVotes, observeWitnesses*3*applied, minReachable, fl.maxLagSeconds, fl.failovers, fl.refusals)
}

// readLog opens a stopped witness's raft.db and counts the entries with an index in (from, to]
// by kind (the command type, or the Raft entry type for Raft's own entries), and sums their
// data bytes.
func readLog(b *testing.B, path string, from, to uint64) (map[string]string, int) {
	b.Helper()
	st, err := raftboltdb.New(raftboltdb.Options{Path: path, BoltOptions: &bbolt.Options{Timeout: 10 * time.Second}})
	if err != nil { // e.g. held by a witness whose shutdown was abandoned
		b.Logf("cannot read the log in %s: %v", path, err)
		return nil, 0
	}
	defer st.Close()
	n, size := map[string]int{}, map[string]int{}
	total := 0
	for i := from + 1; i <= to; i++ {
		var l raft.Log
		if err := st.GetLog(i, &l); err != nil {
			n["missing"]++
			continue
		}
		kind := l.Type.String()
		if l.Type == raft.LogCommand {
			var cmd regentv1.Command
			if err := proto.Unmarshal(l.Data, &cmd); err != nil {
				b.Fatalf("entry %d of %s: %v", i, path, err)
			}
			kind = strings.TrimPrefix(cmd.GetType().String(), "COMMAND_TYPE_")
		}
		n[kind]++
		size[kind] += len(l.Data)
		total += len(l.Data)
	}
	out := map[string]string{}
	for k, v := range n {
		out[k] = fmt.Sprintf("%d entries, %d B avg", v, size[k]/max(v, 1))
	}
	return out, total
}

// fleetState is what the leader's committed state says about the fleet.
type fleetState struct {
	activeChannels int
	reachableVotes int
	maxLagSeconds  int64
	stateBytes     int
	clusters       int
	refusals       map[string]int // clusters whose primary looks down, by why regent will not fail over
	failovers      int            // failover events: an overloaded bench must not start any
}

func inspectFleet(a *agent.Agent) fleetState {
	st, _ := a.FSM().State()
	var f fleetState
	for _, ch := range st.GetChannels() {
		if ch.GetStatus() == regentv1.ChannelStatus_CHANNEL_STATUS_ACTIVE {
			f.activeChannels++
		}
		f.maxLagSeconds = max(f.maxLagSeconds, ch.GetLagSeconds())
	}
	f.clusters = len(st.GetClusters())
	f.refusals = map[string]int{}
	for _, cl := range st.GetClusters() {
		if r := cl.GetRefusal(); r != "" {
			why, _, _ := strings.Cut(r, ":")
			f.refusals[why]++
		}
		for _, ns := range cl.GetNodeStatus() {
			for _, v := range ns.GetVotes() {
				if v.GetReachable() {
					f.reachableVotes++
				}
			}
		}
	}
	f.failovers = len(st.GetFailoverEvents())
	f.stateBytes = proto.Size(st)
	return f
}

// observeSample is everything read at one end of the window.
type observeSample struct {
	at         time.Time
	cpu        time.Duration   // this process, user + system
	machine    time.Duration   // every CPU of the machine, busy (not idle or waiting for I/O)
	pgCPU      []time.Duration // each PostgreSQL server's processes, user + system
	lastIndex  uint64          // the highest last Raft log index among the witnesses
	term       uint64          // the highest Raft term among the witnesses
	hist       probeHist       // the witnesses' probe histograms, summed
	heartbeats int64           // rows written to regent.heartbeat on the primary
	// scrapeFailed is set when a witness's /metrics did not answer (a starved witness): hist
	// is then incomplete.
	scrapeFailed bool
}

func takeSample(ctx context.Context, b *testing.B, c *witnesstest.Cluster, servers []*pgtest.Server, primary *pgx.Conn) observeSample {
	b.Helper()
	s := observeSample{hist: probeHist{buckets: map[float64]float64{}, byResult: map[string]float64{}}}
	for i := range c.Agents {
		h, err := scrapeProbes(ctx, c.Configs[i].HTTPAddr)
		if err != nil {
			if !s.scrapeFailed {
				b.Logf("no probe figures: %v", err)
			}
			s.scrapeFailed = true
		}
		s.hist = s.hist.add(h)
	}
	// Written by the backends at most once a second or so: good enough over the window.
	if err := primary.QueryRow(ctx, `SELECT coalesce(sum(n_tup_ins + n_tup_upd), 0)::bigint FROM pg_stat_user_tables
		WHERE schemaname = 'regent' AND relname = 'heartbeat'`).Scan(&s.heartbeats); err != nil {
		b.Fatal(err)
	}
	for _, a := range c.Agents {
		s.lastIndex = max(s.lastIndex, a.Store().Raft().LastIndex())
		s.term = max(s.term, a.Store().Term())
	}
	s.pgCPU = make([]time.Duration, len(servers))
	for i, srv := range servers {
		s.pgCPU[i] = serverCPU(srv.PID())
	}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	s.cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	s.machine = machineBusy()
	s.at = time.Now()
	return s
}

// probeConnections counts each server's client backends by application name.
func probeConnections(ctx context.Context, b *testing.B, conns []*pgx.Conn) []map[string]int {
	b.Helper()
	out := make([]map[string]int, len(conns))
	for i, conn := range conns {
		rows, err := conn.Query(ctx, `SELECT application_name, count(*) FROM pg_stat_activity
			WHERE backend_type = 'client backend' AND application_name LIKE 'regent-%' GROUP BY 1`)
		if err != nil {
			b.Fatal(err)
		}
		out[i] = map[string]int{}
		for rows.Next() {
			var name string
			var k int
			if err := rows.Scan(&name, &k); err != nil {
				b.Fatal(err)
			}
			out[i][name] = k
		}
		if err := rows.Err(); err != nil {
			b.Fatal(err)
		}
	}
	return out
}

// probeHist is the regent_probe_duration_seconds histogram over every result label:
// cumulative counts by upper bound, and the count of each result.
type probeHist struct {
	buckets  map[float64]float64 // le → cumulative count (+Inf included)
	byResult map[string]float64  // "ok" or an error class → count
	ok       float64
}

func (h probeHist) add(o probeHist) probeHist {
	out := probeHist{buckets: map[float64]float64{}, byResult: map[string]float64{}, ok: h.ok + o.ok}
	for _, m := range []probeHist{h, o} {
		for le, v := range m.buckets {
			out.buckets[le] += v
		}
		for r, v := range m.byResult {
			out.byResult[r] += v
		}
	}
	return out
}

func (h probeHist) sub(o probeHist) probeHist {
	out := probeHist{buckets: map[float64]float64{}, byResult: map[string]float64{}, ok: h.ok - o.ok}
	for le, v := range h.buckets {
		out.buckets[le] = v - o.buckets[le]
	}
	for r, v := range h.byResult {
		out.byResult[r] = v - o.byResult[r]
	}
	return out
}

func (h probeHist) total() float64 { return h.buckets[math.Inf(1)] }

func (h probeHist) failures() map[string]int {
	out := map[string]int{}
	for r, v := range h.byResult {
		if r != "ok" && v > 0 {
			out[r] = int(v)
		}
	}
	return out
}

// quantile estimates the q-quantile as Prometheus's histogram_quantile does: linear
// interpolation inside the bucket that holds it. In the +Inf bucket it answers the highest
// finite bound.
func (h probeHist) quantile(q float64) float64 {
	les := make([]float64, 0, len(h.buckets))
	for le := range h.buckets {
		les = append(les, le)
	}
	sort.Float64s(les)
	total := h.total()
	if total <= 0 {
		return math.NaN()
	}
	rank := q * total
	prevLE, prevCount := 0.0, 0.0
	for _, le := range les {
		count := h.buckets[le]
		if count >= rank {
			if math.IsInf(le, 1) {
				return prevLE
			}
			if count == prevCount {
				return le
			}
			return prevLE + (le-prevLE)*(rank-prevCount)/(count-prevCount)
		}
		prevLE, prevCount = le, count
	}
	return prevLE
}

var scrapeClient = &http.Client{Timeout: 30 * time.Second}

// scrapeProbes reads a witness's regent_probe_duration_seconds histogram from its /metrics
// (Prometheus text format).
func scrapeProbes(ctx context.Context, addr string) (probeHist, error) {
	h := probeHist{buckets: map[float64]float64{}, byResult: map[string]float64{}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return h, err
	}
	resp, err := scrapeClient.Do(req)
	if err != nil {
		return h, fmt.Errorf("scrape %s: %w", addr, err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		name, labels, value, ok := parseSample(line)
		if !ok {
			continue
		}
		switch name {
		case "regent_probe_duration_seconds_bucket":
			le := math.Inf(1)
			if labels["le"] != "+Inf" {
				if le, err = strconv.ParseFloat(labels["le"], 64); err != nil {
					return h, fmt.Errorf("scrape %s: bad bucket in %q", addr, line)
				}
			}
			h.buckets[le] += value
		case "regent_probe_duration_seconds_count":
			h.byResult[labels["result"]] += value
			if labels["result"] == "ok" {
				h.ok += value
			}
		}
	}
	if err := sc.Err(); err != nil {
		return h, fmt.Errorf("scrape %s: %w", addr, err)
	}
	if resp.StatusCode != http.StatusOK {
		return h, fmt.Errorf("scrape %s: %s", addr, resp.Status)
	}
	return h, nil
}

// parseSample splits a text-format sample line `name{k="v",...} value`; label values holding
// quotes or commas are not needed here and not handled.
func parseSample(line string) (name string, labels map[string]string, value float64, ok bool) {
	if line == "" || line[0] == '#' {
		return "", nil, 0, false
	}
	labels = map[string]string{}
	rest := line
	if i := strings.IndexByte(line, '{'); i >= 0 {
		j := strings.LastIndexByte(line, '}')
		if j < i {
			return "", nil, 0, false
		}
		name, rest = line[:i], line[j+1:]
		for _, kv := range strings.Split(line[i+1:j], ",") {
			k, v, found := strings.Cut(kv, "=")
			if found {
				labels[k] = strings.Trim(v, `"`)
			}
		}
	} else {
		var found bool
		if name, rest, found = strings.Cut(line, " "); !found {
			return "", nil, 0, false
		}
	}
	f := strings.Fields(rest)
	if len(f) == 0 {
		return "", nil, 0, false
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return "", nil, 0, false
	}
	return name, labels, v, true
}

// cpuGroup is a cgroup (v1 cpu controller) of the benchmark's own, or "" when none can be made.
type cpuGroup string

// newCPUGroup makes a cgroup under the cpu controller when the benchmark may (root, cgroup v1
// cpu mounted read-write), and removes it when the benchmark ends; it returns "" otherwise.
func newCPUGroup(b *testing.B) cpuGroup {
	const root = "/sys/fs/cgroup/cpu"
	if os.Getenv("REGENT_BENCH_OBSERVE_ISOLATE") == "0" {
		return ""
	}
	if _, err := os.Stat(root + "/cpu.shares"); err != nil {
		return ""
	}
	dir := fmt.Sprintf("%s/regent-bench-%d", root, os.Getpid())
	if err := os.Mkdir(dir, 0o755); err != nil {
		b.Logf("no cgroup for PostgreSQL: %v", err)
		return ""
	}
	b.Cleanup(func() {
		if err := os.Remove(dir); err != nil {
			b.Logf("removing cgroup %s: %v", dir, err)
		}
	})
	if err := os.WriteFile(dir+"/cpu.shares", []byte(strconv.Itoa(pgCPUShares)), 0o644); err != nil {
		b.Logf("no cgroup for PostgreSQL: %v", err)
		return ""
	}
	return cpuGroup(dir)
}

// isolatePostgres moves the servers' processes into cg, and says what it did.
//
// Why: PostgreSQL backends call setsid(), and with the kernel's autogroup scheduling (on by
// default) every session is a scheduling group of its own, weighing as much as the whole
// benchmark process. With 3N kept connections per server, bursts of probes then make hundreds
// of runnable groups against the one holding all three witnesses, and Raft misses its
// heartbeats (leaders come and go) — renicing the backends does nothing across groups. In
// production the witnesses have hosts of their own. In one cgroup the servers weigh
// pgCPUShares together, however many backends they run. (A low weight is no better: on a
// shared machine any other job then starves PostgreSQL.) Backends forked later inherit the
// postmaster's cgroup.
func isolatePostgres(b *testing.B, pg *pgtest.Bench, cg cpuGroup) string {
	if cg == "" {
		return "not grouped (no cgroup: not root, no cgroup v1 cpu controller, or REGENT_BENCH_OBSERVE_ISOLATE=0): every backend competes with the witnesses on its own"
	}
	for _, s := range pg.Servers() {
		for _, pid := range serverPIDs(s.PID()) {
			if err := os.WriteFile(string(cg)+"/cgroup.procs", []byte(pid), 0o644); err != nil {
				b.Fatalf("moving %s (pid %s) into %s: %v", s, pid, cg, err)
			}
		}
	}
	return fmt.Sprintf("in cgroup %s (cpu.shares %d against 1024 for the benchmark's own session)", cg, pgCPUShares)
}

// procStat reads a process's parent and CPU times (own, and of its reaped children).
func procStat(pid string) (ppid int, own, children time.Duration, ok bool) {
	raw, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0, 0, 0, false
	}
	// The command name is in parentheses and may hold spaces: fields start after the last ')'.
	i := strings.LastIndexByte(string(raw), ')')
	if i < 0 {
		return 0, 0, 0, false
	}
	f := strings.Fields(string(raw[i+1:]))
	// f[0] is field 3 (state): ppid is field 4, utime..cstime are fields 14..17.
	if len(f) < 15 {
		return 0, 0, 0, false
	}
	num := func(k int) int64 { v, _ := strconv.ParseInt(f[k-3], 10, 64); return v }
	tick := time.Second / clockTicks
	return int(num(4)), time.Duration(num(14)+num(15)) * tick, time.Duration(num(16)+num(17)) * tick, true
}

// serverPIDs lists a postmaster and its children (backends, WAL sender and receiver,
// background workers). PostgreSQL's children call setsid(), so the postmaster's process group
// does not hold them.
func serverPIDs(postmaster int) []string {
	if postmaster == 0 {
		return nil
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	out := []string{strconv.Itoa(postmaster)}
	for _, e := range ents {
		name := e.Name()
		if name[0] < '0' || name[0] > '9' {
			continue
		}
		if ppid, _, _, ok := procStat(name); ok && ppid == postmaster {
			out = append(out, name)
		}
	}
	return out
}

// serverCPU is the CPU time of a PostgreSQL server: its postmaster's and live children's, plus
// what its reaped children (backends that exited) used.
func serverCPU(postmaster int) time.Duration {
	var sum time.Duration
	for i, pid := range serverPIDs(postmaster) {
		_, own, children, _ := procStat(pid)
		sum += own
		if i == 0 {
			sum += children
		}
	}
	return sum
}

// pgMemory sums the memory of every process of the servers: proportional set size, and
// private (unshared) memory; it also counts the processes.
func pgMemory(servers []*pgtest.Server) (pssMiB, privateMiB, procs int) {
	var pss, private int
	for _, s := range servers {
		for _, pid := range serverPIDs(s.PID()) {
			path := "/proc/" + pid + "/smaps_rollup"
			pss += statusKB(path, "Pss:")
			private += statusKB(path, "Private_Clean:") + statusKB(path, "Private_Dirty:")
			procs++
		}
	}
	return pss / 1024, private / 1024, procs
}

// machineBusy is the time all CPUs spent busy since boot, from the first line of /proc/stat.
func machineBusy() time.Duration {
	raw, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(raw), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	var ticks int64
	for i, v := range f[1:] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		if i >= 8 { // guest time is already in user
			break
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		ticks += n
	}
	return time.Duration(ticks) * (time.Second / clockTicks)
}

// rssMiB is this process's resident memory (all three witnesses and the benchmark).
func rssMiB() int { return statusKB("/proc/self/status", "VmRSS:") / 1024 }

func statusKB(path, key string) int {
	raw, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if rest, ok := strings.CutPrefix(line, key); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				v, _ := strconv.Atoi(f[0])
				return v
			}
		}
	}
	return 0
}
