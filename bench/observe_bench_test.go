package bench

import (
	"bufio"
	"context"
	"fmt"
	"math"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/regentdb/regent/agent"
	"github.com/regentdb/regent/internal/witnesstest"
	"github.com/regentdb/regent/pgtest"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// Observe benchmark knobs. The probe interval is the default policy's (500 ms): the specs carry
// no policy.
const (
	observeWitnesses     = 3
	observeProbeInterval = 500 * time.Millisecond
	// observeWindow is how long the steady state is measured.
	observeWindow = 25 * time.Second
	// observeSteadyWait bounds the wait for every channel active and every vote reachable; a
	// fleet that never gets there is measured anyway (that is the finding).
	observeSteadyWait = 2 * time.Minute
	// observeSampleEvery is how often the leader's channels are looked at during the window.
	observeSampleEvery = 2500 * time.Millisecond
	// clockTicks is USER_HZ, the unit of /proc/<pid>/stat CPU times (100 on every Linux
	// architecture Go supports).
	clockTicks = 100
)

// observeCounts are the fleet sizes measured; REGENT_BENCH_OBSERVE_CLUSTERS (comma-separated)
// overrides them, e.g. to find where a smaller machine saturates.
func observeCounts(b *testing.B) []int {
	v := os.Getenv("REGENT_BENCH_OBSERVE_CLUSTERS")
	if v == "" {
		return []int{100, 1000}
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
// default probe interval. Once every channel is active and every vote reachable (or after
// observeSteadyWait), it measures a fixed window and reports: process CPU per witness, the
// PostgreSQL servers' CPU, probe latency p50/p99 (from the witnesses' own
// regent_probe_duration_seconds histograms), probes per second achieved and wanted, committed
// Raft entries per second on the leader, heartbeats per second, and how many channels stayed
// active. Each sub-benchmark runs its measurement once, whatever b.N is.
func BenchmarkObserve(b *testing.B) {
	counts := observeCounts(b)
	most := slicesMax(counts)
	// Per server: 3 witnesses × N kept probe connections, N heartbeat connections on the
	// primary, plus WAL senders, superuser slots and the benchmark's own.
	conns := observeWitnesses*most + most + 50
	pg := pgtest.Start(b, pgtest.Options{Standbys: 2, Settings: map[string]string{
		"max_connections": strconv.Itoa(conns),
	}})
	for _, n := range counts {
		b.Run(fmt.Sprintf("clusters=%d", n), func(b *testing.B) { benchObserve(b, pg, n) })
	}
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

func applySpec(ctx context.Context, c regentv1.RegentClient, sp *regentv1.ClusterSpec) error {
	for {
		_, err := c.ApplyCluster(ctx, &regentv1.ApplyClusterRequest{Spec: sp})
		if status.Code(err) != codes.Unavailable || ctx.Err() != nil {
			return err
		}
	}
}

func benchObserve(b *testing.B, pg *pgtest.Bench, n int) {
	servers := pg.Servers()[:3]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	setupStart := time.Now()
	c := witnesstest.Start(b, observeWitnesses, witnesstest.Options{})
	leader := c.WaitLeader(time.Minute)
	c.WaitReady(time.Minute)
	c.WaitMembers(time.Minute)

	// Apply the specs through the leader, 8 at a time.
	client := c.Client(leader)
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
feed:
	for i := range n {
		select {
		case next <- i:
		case err := <-errs:
			b.Error(err)
			break feed
		}
	}
	close(next)
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Error(err)
	}
	if b.Failed() {
		b.FailNow()
	}
	applied := time.Since(setupStart)

	// Steady state: every channel active and every node reachable to every witness.
	leader = c.WaitLeader(time.Minute)
	steadyAt := time.Now()
	steady := false
	var fl fleetState
	for deadline := time.Now().Add(observeSteadyWait); ; {
		fl = inspectFleet(c.Agents[leader])
		if fl.activeChannels == 2*n && fl.reachableVotes == observeWitnesses*3*n {
			steady = true
			break
		}
		if time.Now().After(deadline) {
			break
		}
		select { // poll interval, not synchronisation
		case <-ctx.Done():
			b.Fatal(ctx.Err())
		case <-time.After(time.Second):
		}
	}
	toSteady := time.Since(steadyAt)
	if !steady {
		b.Logf("clusters=%d: NOT steady after %v: %d/%d channels active, %d/%d votes reachable; measuring anyway",
			n, observeSteadyWait, fl.activeChannels, 2*n, fl.reachableVotes, observeWitnesses*3*n)
	}

	pgConns := make([]*pgx.Conn, len(servers))
	for i, s := range servers {
		conn, err := s.Connect(ctx)
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close(context.Background())
		pgConns[i] = conn
	}

	// The window.
	leader = c.WaitLeader(time.Minute)
	leaderChanges := c.Agents[leader].Store().LeaderChanges()
	b.ResetTimer()
	start := takeSample(ctx, b, c, leader, servers, pgConns[0])
	minActive, minReachable := fl.activeChannels, fl.reachableVotes
	tick := time.NewTicker(observeSampleEvery)
	end := time.NewTimer(observeWindow)
window:
	for {
		select {
		case <-ctx.Done():
			b.Fatal(ctx.Err())
		case <-tick.C:
			f := inspectFleet(c.Agents[leader])
			minActive, minReachable = min(minActive, f.activeChannels), min(minReachable, f.reachableVotes)
		case <-end.C:
			break window
		}
	}
	tick.Stop()
	stop := takeSample(ctx, b, c, leader, servers, pgConns[0])
	b.StopTimer()
	fl = inspectFleet(c.Agents[leader])
	minActive, minReachable = min(minActive, fl.activeChannels), min(minReachable, fl.reachableVotes)
	if got := c.Agents[leader].Store().LeaderChanges(); got != leaderChanges || !c.Agents[leader].Store().IsLeader() {
		b.Errorf("leadership changed during the window (%d → %d leader changes): the entry rate is not the leader's", leaderChanges, got)
	}
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
	wanted := float64(observeWitnesses*3*n) * float64(time.Second) / float64(observeProbeInterval)
	entries := float64(stop.lastIndex-start.lastIndex) / secs
	beats := float64(stop.heartbeats-start.heartbeats) / secs
	p50, p99 := h.quantile(0.50), h.quantile(0.99)
	okShare := 100.0
	if h.total() > 0 {
		okShare = 100 * h.ok / h.total()
	}

	b.ReportMetric(cpu/observeWitnesses, "cores/witness")
	b.ReportMetric(pgCPU, "pg-cores")
	b.ReportMetric(p50*1000, "probe-p50-ms")
	b.ReportMetric(p99*1000, "probe-p99-ms")
	b.ReportMetric(probes, "probes/s")
	b.ReportMetric(wanted, "probes-wanted/s")
	b.ReportMetric(okShare, "probes-ok-%")
	b.ReportMetric(entries, "entries/s")
	b.ReportMetric(beats, "heartbeats/s")
	b.ReportMetric(100*float64(minActive)/float64(2*n), "min-active-%")
	b.ReportMetric(0, "ns/op") // the window is fixed: time per op means nothing here

	var load string
	if raw, err := os.ReadFile("/proc/loadavg"); err == nil {
		load = strings.Join(strings.Fields(string(raw))[:3], " ")
	}
	b.Logf("clusters=%d: specs applied in %v; steady=%v after a further %v; window %.1fs; load average %s",
		n, applied.Round(time.Millisecond), steady, toSteady.Round(time.Millisecond), secs, load)
	b.Logf("  witness process: %.3f cores in all (%.3f per witness), RSS %d MiB; PostgreSQL: %.3f cores in all (primary %.3f, standby1 %.3f, standby2 %.3f), PSS %d MiB",
		cpu, cpu/observeWitnesses, rssMiB(), pgCPU, pgCPUs[0], pgCPUs[1], pgCPUs[2], pgPSSMiB(servers))
	b.Logf("  probes: %.0f/s of %.0f/s wanted (%.1f%%), %.2f%% ok; latency p50 %.2f ms, p90 %.2f ms, p99 %.2f ms (histogram estimate); failures by class: %v",
		probes, wanted, 100*probes/wanted, okShare, p50*1000, h.quantile(0.90)*1000, p99*1000, h.failures())
	b.Logf("  kept connections: %v (want %d probe connections per server, %d heartbeat on the primary)", conns, observeWitnesses*n, n)
	b.Logf("  raft: %.2f committed entries/s on the leader (%d in %.1fs); FSM state %d KiB",
		entries, stop.lastIndex-start.lastIndex, secs, fl.stateBytes/1024)
	b.Logf("  heartbeats: %.1f/s of %d/s wanted; channels active: %d/%d at the end, %d at least; reachable votes: %d/%d at the end, %d at least; max lag %ds",
		beats, n, fl.activeChannels, 2*n, minActive, fl.reachableVotes, observeWitnesses*3*n, minReachable, fl.maxLagSeconds)
}

// fleetState is what the leader's committed state says about the fleet.
type fleetState struct {
	activeChannels int
	reachableVotes int
	maxLagSeconds  int64
	stateBytes     int
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
	for _, cl := range st.GetClusters() {
		for _, ns := range cl.GetNodeStatus() {
			for _, v := range ns.GetVotes() {
				if v.GetReachable() {
					f.reachableVotes++
				}
			}
		}
	}
	f.stateBytes = proto.Size(st)
	return f
}

// observeSample is everything read at one end of the window.
type observeSample struct {
	at         time.Time
	cpu        time.Duration   // this process, user + system
	pgCPU      []time.Duration // each PostgreSQL server's processes, user + system
	lastIndex  uint64          // the leader's last Raft log index
	hist       probeHist       // the witnesses' probe histograms, summed
	heartbeats int64           // rows written to regent.heartbeat on the primary
}

func takeSample(ctx context.Context, b *testing.B, c *witnesstest.Cluster, leader int, servers []*pgtest.Server, primary *pgx.Conn) observeSample {
	b.Helper()
	s := observeSample{hist: probeHist{buckets: map[float64]float64{}, byResult: map[string]float64{}}}
	for i := range c.Agents {
		h, err := scrapeProbes(ctx, c.Configs[i].HTTPAddr)
		if err != nil {
			b.Fatal(err)
		}
		s.hist = s.hist.add(h)
	}
	// Written by the backends at most once a second or so: good enough over the window.
	if err := primary.QueryRow(ctx, `SELECT coalesce(sum(n_tup_ins + n_tup_upd), 0)::bigint FROM pg_stat_user_tables
		WHERE schemaname = 'regent' AND relname = 'heartbeat'`).Scan(&s.heartbeats); err != nil {
		b.Fatal(err)
	}
	s.lastIndex = c.Agents[leader].Store().Raft().LastIndex()
	s.pgCPU = make([]time.Duration, len(servers))
	for i, srv := range servers {
		s.pgCPU[i] = serverCPU(srv.PID())
	}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	s.cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
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

var scrapeClient = &http.Client{Timeout: 10 * time.Second}

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

// pgPSSMiB is the proportional memory of every process of the servers.
func pgPSSMiB(servers []*pgtest.Server) int {
	var kb int
	for _, s := range servers {
		for _, pid := range serverPIDs(s.PID()) {
			kb += statusKB("/proc/"+pid+"/smaps_rollup", "Pss:")
		}
	}
	return kb / 1024
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
