package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/regentdb/regent/config"
	"github.com/regentdb/regent/internal/cutproxy"
	"github.com/regentdb/regent/internal/freeport"
	"github.com/regentdb/regent/internal/witnesstest"
	"github.com/regentdb/regent/keeper"
	"github.com/regentdb/regent/pgconnect"
	"github.com/regentdb/regent/pgops"
	"github.com/regentdb/regent/pgtest"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// wait bounds each setup step and each poll; the tests poll conditions, never sleep.
const wait = 60 * time.Second

// Lease settings: the policy's default ttl, with the wide fence margin the keeper's own tests
// use so that the SQL fence fits on a loaded two-core machine running -race tests.
const (
	ttl    = 2 * time.Second
	margin = 800 * time.Millisecond
	drift  = 0.05
)

// names are the nodes in spec order; pg-us starts as the primary, pg-eu is the preferred
// candidate (priority 1).
var names = []string{"pg-us", "pg-eu", "pg-ap"}

// node is one PostgreSQL server of the rig and the keeper beside it.
type node struct {
	name   string
	pg     *pgtest.Server
	cfg    keeper.Config
	keeper *keeper.Keeper
	// addr is where the rest of the world reaches the server and keeperAddr its keeper's
	// gRPC API: the spec's host:port and keeper_addr (proxies for a cut host).
	addr, keeperAddr string
}

// rig is three witnesses, a primary (pg-us) with two streaming standbys and a keeper beside
// each, with the orders cluster applied and automatic failover on.
type rig struct {
	t     *testing.T
	bench *pgtest.Bench
	w     *witnesstest.Cluster
	nodes map[string]*node
	spec  *regentv1.ClusterSpec
	// links are the proxies every path to pg-us's host goes through (rigOptions.cutUS).
	links []*cutproxy.Proxy
	logs  *logBook
}

type rigOptions struct {
	// cutUS routes every path to pg-us's host through proxies the test can cut (see
	// DESIGN.md): the witnesses' probes, fences and heartbeats, the standbys' replication,
	// the leader's calls to its keeper, and its keeper's calls to the witnesses.
	cutUS bool
}

// startRig builds the rig and waits until pg-us's keeper holds the lease and the witnesses
// see the cluster healthy.
func startRig(t *testing.T, o rigOptions) *rig {
	t.Helper()
	b := pgtest.Start(t, pgtest.Options{Standbys: 2})
	r := &rig{t: t, bench: b, nodes: map[string]*node{}, logs: newLogBook(t)}
	for i, name := range names {
		r.nodes[name] = &node{name: name, pg: b.Servers()[i]}
	}
	// Servers a keeper (re)started with pg_ctl are not pgtest's children; the bench's Close
	// stops them too (the keepers, registered later, are shut down before it runs).
	r.w = witnesstest.Start(t, 3, witnesstest.Options{})
	leader := r.w.WaitLeader(wait)
	r.w.WaitReady(wait)

	for _, n := range r.nodes {
		n.cfg = r.keeperConfig(n)
		n.addr = net.JoinHostPort(n.pg.Host, strconv.Itoa(n.pg.Port))
		n.keeperAddr = n.cfg.ListenGRPC
	}
	if o.cutUS {
		r.cutPaths()
	}
	r.spec = &regentv1.ClusterSpec{
		Name: "orders", Primary: "pg-us",
		Policy: &regentv1.Policy{
			ProbeIntervalMs: 250, ProbeTimeoutMs: 200, DownAfterMs: 1500, LeaseTtlMs: ttl.Milliseconds(),
			// The SQL fence of a cut-off primary must fail fast; the lease does the fencing.
			CommandTimeoutMs: 2000,
		},
	}
	for _, name := range names {
		n := r.nodes[name]
		host, port, _ := net.SplitHostPort(n.addr)
		p, _ := strconv.Atoi(port)
		ns := &regentv1.NodeSpec{Name: name, Region: witnesstest.Regions[len(r.spec.Nodes)], Host: host, Port: uint32(p), KeeperAddr: n.keeperAddr}
		if name == "pg-eu" {
			ns.Priority = 1
		}
		r.spec.Nodes = append(r.spec.Nodes, ns)
	}
	ctx := witnesstest.Context(t, wait)
	witnesstest.Retry(t, ctx, "apply the cluster", func() error {
		_, err := r.w.Client(leader).ApplyCluster(ctx, &regentv1.ApplyClusterRequest{Spec: r.spec})
		return err
	})
	// Keepers start once the cluster is known: a keeper that sees no primary fences its server.
	witnesstest.Eventually(t, wait, "every witness knowing the cluster", func() bool {
		for _, i := range r.w.Running() {
			if _, ok := r.w.Agents[i].FSM().Cluster("orders"); !ok {
				return false
			}
		}
		return true
	})
	for _, name := range names {
		r.startKeeper(r.nodes[name])
	}
	r.waitHealthy()
	return r
}

// cutPaths puts a proxy on every path to pg-us's host and points the world at them.
func (r *rig) cutPaths() {
	us := r.nodes["pg-us"]
	via := func(target string) string {
		p, err := cutproxy.New("127.0.0.1:0", target)
		if err != nil {
			r.t.Fatal(err)
		}
		r.t.Cleanup(func() { p.Close() })
		r.links = append(r.links, p)
		return p.Addr()
	}
	// In: the witnesses' probes, fences and heartbeats, the standbys' replication (below) and
	// every client that goes by the spec reach pg-us's PostgreSQL through one proxy; the
	// leader reaches its keeper through another.
	us.addr = via(us.addr)
	us.keeperAddr = via(us.keeperAddr)
	// Out: pg-us's keeper reaches each witness through a proxy of its own.
	for i, w := range us.cfg.Witnesses {
		us.cfg.Witnesses[i] = via(w)
	}
	// The standbys stream from pg-us through its proxy.
	ctx := witnesstest.Context(r.t, wait)
	host, port, _ := net.SplitHostPort(us.addr)
	p, _ := strconv.Atoi(port)
	for _, name := range []string{"pg-eu", "pg-ap"} {
		t := r.target(r.nodes[name])
		if err := pgops.Repoint(ctx, t, host, uint16(p)); err != nil {
			r.t.Fatalf("point %s at pg-us's proxy: %v", name, err)
		}
		if err := pgops.WaitStreamingFrom(ctx, t, host, uint16(p)); err != nil {
			r.t.Fatalf("%s streaming through pg-us's proxy: %v", name, err)
		}
	}
}

// cut cuts pg-us's host off: every proxy at once, new connections refused or blackholed.
func (r *rig) cut(mode cutproxy.Mode) {
	for _, p := range r.links {
		p.Cut(mode)
	}
}

// heal reconnects pg-us's host.
func (r *rig) heal() {
	for _, p := range r.links {
		p.Heal()
	}
}

// target is a superuser login to n's server, directly.
func (r *rig) target(n *node) pgconnect.Target {
	return pgconnect.Target{Host: n.pg.Host, Port: uint16(n.pg.Port), User: pgtest.BootstrapUser, Database: "postgres",
		SSLMode: "disable", Node: n.name, Cluster: "orders"}
}

// keeperConfig is the configuration of n's keeper: listeners on n's own loopback address (so
// that HAProxy can check it with `check port`, as on a real host), the witnesses direct.
func (r *rig) keeperConfig(n *node) keeper.Config {
	listen := func() string {
		// freeport hands out each port once in this process, and checked it free on
		// 127.0.0.1; n's own address has fewer users still.
		p, err := freeport.Get()
		if err != nil {
			r.t.Fatal(err)
		}
		return net.JoinHostPort(n.pg.Host, strconv.Itoa(p))
	}
	var ws []string
	for _, wc := range r.w.Configs {
		ws = append(ws, wc.GRPCAddr)
	}
	return keeper.Config{
		NodeName: n.name, Cluster: "orders", DataDir: n.pg.DataDir, BinDir: r.bench.BinDir(),
		Host: n.pg.Host, Port: uint16(n.pg.Port),
		Postgres: config.Postgres{User: pgtest.BootstrapUser, Database: "postgres", SSLMode: "disable"},
		RunAs:    "postgres",
		// pgtest gives each server its port, address, socket directory and name on the
		// command line, so a pg_ctl start by the keeper must too.
		PostgresOptions: []string{"-p", strconv.Itoa(n.pg.Port), "-c", "listen_addresses=" + n.pg.Host,
			"-c", "unix_socket_directories=" + n.pg.Dir, "-c", "cluster_name=" + n.pg.Name},
		PostgresLog:  filepath.Join(n.pg.Dir, "keeper-started.log"),
		StartTimeout: config.Duration{Duration: time.Minute},
		Witnesses:    ws,
		ListenGRPC:   listen(),
		ListenHTTP:   listen(),
		StateDir:     filepath.Join(r.t.TempDir(), "keeper-"+n.name),
		LeaseTTL:     config.Duration{Duration: ttl},
		LeaseDrift:   drift,
		FenceMargin:  config.Duration{Duration: margin},
		Log:          config.Log{Format: "text", Level: "debug"},
	}
}

// startKeeper starts n's keeper; it is shut down when the test ends unless stopKeeper ran.
func (r *rig) startKeeper(n *node) {
	r.t.Helper()
	k, err := keeper.Start(n.cfg, r.logs.logger(n.name))
	if err != nil {
		r.t.Fatalf("start the keeper of %s: %v", n.name, err)
	}
	n.keeper = k
	r.t.Cleanup(func() { r.stopKeeper(n) })
}

// stopKeeper shuts n's keeper down (it fences a writable server first, as it would on a host).
func (r *rig) stopKeeper(n *node) {
	if n.keeper == nil {
		return
	}
	if err := n.keeper.Shutdown(); err != nil {
		r.t.Logf("shut down the keeper of %s: %v", n.name, err)
	}
	n.keeper = nil
}

// waitHealthy waits until pg-us's keeper holds the lease and the witnesses see every node
// reachable, with both standbys streaming.
func (r *rig) waitHealthy() {
	r.t.Helper()
	witnesstest.Eventually(r.t, wait, "pg-us's keeper holding the lease and its server writable", func() bool {
		st := r.nodes["pg-us"].keeper.Status(context.Background(), false)
		return st.HoldsLease && !st.Fenced
	})
	witnesstest.Eventually(r.t, wait, "the witnesses seeing every node up and both channels active", func() bool {
		c := r.cluster()
		if c == nil {
			return false
		}
		for _, ns := range c.GetNodeStatus() {
			up := 0
			for _, v := range ns.GetVotes() {
				if v.GetReachable() {
					up++
				}
			}
			if up < 3 {
				return false
			}
		}
		active := 0
		for _, ch := range r.state().GetChannels() {
			if ch.GetCluster() == "orders" && ch.GetStatus() == regentv1.ChannelStatus_CHANNEL_STATUS_ACTIVE {
				active++
			}
		}
		return len(c.GetNodeStatus()) == 3 && active == 2
	})
}

// state is the replicated state as a running witness has applied it.
func (r *rig) state() *regentv1.State {
	st, _ := r.w.Agents[r.w.Running()[0]].FSM().State()
	return st
}

// cluster is the orders cluster in state(), or nil.
func (r *rig) cluster() *regentv1.Cluster {
	for _, c := range r.state().GetClusters() {
		if c.GetName() == "orders" {
			return c
		}
	}
	return nil
}

// failover returns the cluster's failover event from pg-us, or nil.
func (r *rig) failover() *regentv1.FailoverEvent {
	for _, ev := range r.state().GetFailoverEvents() {
		if ev.GetCluster() == "orders" && ev.GetFromNode() == "pg-us" {
			return ev
		}
	}
	return nil
}

// waitFailover waits until the failover from pg-us has completed and returns it.
func (r *rig) waitFailover(timeout time.Duration) *regentv1.FailoverEvent {
	r.t.Helper()
	var ev *regentv1.FailoverEvent
	witnesstest.Eventually(r.t, timeout, "the failover from pg-us completing", func() bool {
		ev = r.failover()
		if ev.GetStep() == regentv1.FailoverStep_FAILOVER_STEP_ABORTED {
			r.t.Fatalf("the failover aborted: %s (notes %q)", ev.GetAbortReason(), ev.GetNotes())
		}
		return ev.GetStep() == regentv1.FailoverStep_FAILOVER_STEP_COMPLETED
	})
	return ev
}

// stepAt is when step of ev was committed (zero if it was not).
func stepAt(ev *regentv1.FailoverEvent, step regentv1.FailoverStep) time.Time {
	for _, s := range ev.GetSteps() {
		if s.GetStep() == step {
			return s.GetAt().AsTime()
		}
	}
	return time.Time{}
}

// logBook keeps the keepers' (and haproxy's) logs of one test and writes them to the test log when the test
// fails (all of them with REGENT_TEST_LOG set).
type logBook struct {
	mu    sync.Mutex
	lines []string
}

// maxLogLines bounds what a failed test prints.
const maxLogLines = 4000

func newLogBook(t *testing.T) *logBook {
	l := &logBook{}
	t.Cleanup(func() {
		if !t.Failed() && os.Getenv("REGENT_TEST_LOG") == "" {
			return
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		lines := l.lines
		if len(lines) > maxLogLines {
			t.Logf("--- logs: the first %d lines are left out", len(lines)-maxLogLines)
			lines = lines[len(lines)-maxLogLines:]
		}
		t.Logf("--- keeper and haproxy logs:\n%s", strings.Join(lines, ""))
	})
	return l
}

func (l *logBook) logger(name string) *slog.Logger {
	return slog.New(slog.NewTextHandler(prefixWriter{l, name}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// prefixWriter appends one program's log lines to the book, tagged with its name.
type prefixWriter struct {
	l    *logBook
	name string
}

func (w prefixWriter) Write(p []byte) (int, error) {
	w.l.mu.Lock()
	w.l.lines = append(w.l.lines, fmt.Sprintf("[%s] %s", w.name, p))
	w.l.mu.Unlock()
	return len(p), nil
}
