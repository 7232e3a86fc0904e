// Package witnesstest starts in-process witness clusters over real loopback TCP for tests and
// benchmarks: real Raft, raft-boltdb, memberlist and gRPC, with fast timings.
package witnesstest

import (
	"context"
	"fmt"
	"github.com/regentdb/regent/internal/poll"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/regentdb/regent/agent"
	"github.com/regentdb/regent/config"
	"github.com/regentdb/regent/internal/freeport"
	"github.com/regentdb/regent/logging"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// Regions cycles through three regions for the witnesses.
var Regions = []string{"us-east", "eu-west", "ap-south"}

// Options tune a test cluster.
type Options struct {
	// BootstrapExpect defaults to the number of witnesses started.
	BootstrapExpect int
	// RaftMultiplier defaults to 1 (hashicorp/raft's own timings: tighter ones make leaders step down spuriously when -race test binaries share two cores).
	RaftMultiplier float64
	// SnapshotThreshold, SnapshotInterval and TrailingLogs override the agent defaults.
	SnapshotThreshold uint64
	SnapshotInterval  time.Duration
	TrailingLogs      uint64
	// Postgres, Alerts and DNSKeys are copied into every witness's configuration.
	Postgres config.Postgres
	Alerts   config.Alerts
	DNSKeys  map[string]config.DNSKey
	// Configure, when set, adjusts witness i's configuration before it first starts.
	Configure func(i int, cfg *config.Agent)
}

// Cluster is a set of in-process witnesses.
type Cluster struct {
	tb      testing.TB
	opts    Options
	Configs []config.Agent
	Agents  []*agent.Agent // nil while stopped
	conns   map[string]*grpc.ClientConn
}

// Start launches n witnesses that find each other through gossip and bootstrap by themselves.
// Everything is stopped when the test ends.
func Start(tb testing.TB, n int, opts Options) *Cluster {
	tb.Helper()
	if opts.BootstrapExpect == 0 {
		opts.BootstrapExpect = n
	}
	if opts.RaftMultiplier == 0 {
		opts.RaftMultiplier = 1
	}
	c := &Cluster{tb: tb, opts: opts, conns: map[string]*grpc.ClientConn{}}
	tb.Cleanup(c.stopAll)
	for range n {
		c.Add()
	}
	return c
}

// Add configures and starts one more witness, joining the existing ones; it returns its index.
func (c *Cluster) Add() int {
	c.tb.Helper()
	i := len(c.Configs)
	var addrs [4]string
	for j := range addrs {
		a, err := freeport.Addr()
		if err != nil {
			c.tb.Fatal(err)
		}
		addrs[j] = a
	}
	cfg := config.Agent{
		NodeName:          fmt.Sprintf("w%d", i+1),
		Region:            Regions[i%len(Regions)],
		DataDir:           filepath.Join(c.tb.TempDir(), fmt.Sprintf("w%d", i+1)),
		RaftAddr:          addrs[0],
		GossipAddr:        addrs[1],
		GRPCAddr:          addrs[2],
		HTTPAddr:          addrs[3],
		BootstrapExpect:   c.opts.BootstrapExpect,
		RaftMultiplier:    c.opts.RaftMultiplier,
		SnapshotThreshold: config.DefaultSnapshotThreshold,
		SnapshotInterval:  config.Duration{Duration: config.DefaultSnapshotInterval},
		TrailingLogs:      config.DefaultTrailingLogs,
		Log:               config.Log{Format: "text", Level: "info"},
		Postgres:          c.opts.Postgres,
		Alerts:            c.opts.Alerts,
		DNSKeys:           c.opts.DNSKeys,
	}
	if cfg.Postgres.User == "" {
		cfg.Postgres = config.Postgres{User: config.DefaultPostgresUser, Database: config.DefaultPostgresDatabase, SSLMode: "disable"}
	}
	if cfg.Alerts.WebhookURL != "" && cfg.Alerts.WebhookTimeout.Duration == 0 {
		cfg.Alerts.WebhookTimeout.Duration = time.Second
	}
	if c.opts.SnapshotThreshold > 0 {
		cfg.SnapshotThreshold = c.opts.SnapshotThreshold
	}
	if c.opts.SnapshotInterval > 0 {
		cfg.SnapshotInterval.Duration = c.opts.SnapshotInterval
	}
	if c.opts.TrailingLogs > 0 {
		cfg.TrailingLogs = c.opts.TrailingLogs
	}
	for _, other := range c.Configs {
		cfg.Join = append(cfg.Join, other.GossipAddr)
	}
	if c.opts.Configure != nil {
		c.opts.Configure(i, &cfg)
	}
	c.Configs = append(c.Configs, cfg)
	c.Agents = append(c.Agents, nil)
	c.StartNode(i)
	return i
}

// StartNode (re)starts witness i with its configuration and data directory.
func (c *Cluster) StartNode(i int) {
	c.tb.Helper()
	if c.Agents[i] != nil {
		c.tb.Fatalf("witness %d already running", i)
	}
	cfg := c.Configs[i]
	// Join every other witness, so any of them can introduce a restarted one.
	cfg.Join = nil
	for j, other := range c.Configs {
		if j != i {
			cfg.Join = append(cfg.Join, other.GossipAddr)
		}
	}
	logger := logging.Discard()
	if os.Getenv("REGENT_TEST_LOG") != "" {
		logger, _ = logging.New(os.Stderr, "text", os.Getenv("REGENT_TEST_LOG"))
	}
	a, err := agent.Start(cfg, logger)
	if err != nil {
		c.tb.Fatalf("start witness %s: %v", cfg.NodeName, err)
	}
	c.Agents[i] = a
}

// StopNode shuts witness i down, keeping its data directory.
func (c *Cluster) StopNode(i int) {
	c.tb.Helper()
	if c.Agents[i] == nil {
		return
	}
	if err := c.Agents[i].Shutdown(); err != nil {
		c.tb.Logf("shutdown %s: %v", c.Configs[i].NodeName, err)
	}
	c.Agents[i] = nil
	if conn, ok := c.conns[c.Configs[i].GRPCAddr]; ok {
		conn.Close()
		delete(c.conns, c.Configs[i].GRPCAddr)
	}
}

// WipeNode removes witness i's data directory (it must be stopped); it restarts as a new witness.
func (c *Cluster) WipeNode(i int) {
	c.tb.Helper()
	if c.Agents[i] != nil {
		c.tb.Fatalf("wipe of running witness %d", i)
	}
	if err := os.RemoveAll(c.Configs[i].DataDir); err != nil {
		c.tb.Fatal(err)
	}
}

func (c *Cluster) stopAll() {
	for i := range c.Agents {
		c.StopNode(i)
	}
	for _, conn := range c.conns {
		conn.Close()
	}
}

// Client returns a gRPC client of witness i's API.
func (c *Cluster) Client(i int) regentv1.RegentClient {
	c.tb.Helper()
	addr := c.Configs[i].GRPCAddr
	conn, ok := c.conns[addr]
	if !ok {
		var err error
		conn, err = grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			c.tb.Fatal(err)
		}
		c.conns[addr] = conn
	}
	return regentv1.NewRegentClient(conn)
}

// Running returns the indexes of running witnesses.
func (c *Cluster) Running() []int {
	var out []int
	for i, a := range c.Agents {
		if a != nil {
			out = append(out, i)
		}
	}
	return out
}

// Eventually polls cond every 20ms until it holds or timeout passes, then fails the test.
func Eventually(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	if !poll.Until(timeout, 20*time.Millisecond, cond) {
		tb.Fatalf("timed out after %v waiting for %s", timeout, what)
	}
}

// Retry calls f until it succeeds, retrying while the witnesses answer Unavailable (an
// election) every 50ms, as a client is expected to; any other error, or ctx ending, fails
// the test.
func Retry(tb testing.TB, ctx context.Context, what string, f func() error) {
	tb.Helper()
	for {
		err := f()
		if err == nil {
			return
		}
		if status.Code(err) != codes.Unavailable || ctx.Err() != nil {
			tb.Fatalf("%s: %v", what, err)
		}
		// Pace the retries of an election that takes a while.
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// WaitLeader waits until every running witness agrees on one leader among them, and it has
// established its leadership; it returns that witness's index.
func (c *Cluster) WaitLeader(timeout time.Duration) int {
	c.tb.Helper()
	leader := -1
	Eventually(c.tb, timeout, "one agreed leader", func() bool {
		leader = -1
		var id string
		for _, i := range c.Running() {
			lid, _ := c.Agents[i].Store().Leader()
			if lid == "" || (id != "" && lid != id) {
				return false
			}
			id = lid
			if c.Agents[i].ID() == lid && c.Agents[i].Store().IsLeader() {
				leader = i
			}
		}
		return leader >= 0
	})
	return leader
}

// WaitReady waits until every running witness reports ready.
func (c *Cluster) WaitReady(timeout time.Duration) {
	c.tb.Helper()
	why := ""
	if !poll.Until(timeout, 20*time.Millisecond, func() bool {
		why = ""
		for _, i := range c.Running() {
			if ok, reason := c.Agents[i].Ready(); !ok {
				why += fmt.Sprintf(" %s: %s;", c.Configs[i].NodeName, reason)
			}
		}
		return why == ""
	}) {
		c.tb.Fatalf("timed out after %v waiting for all witnesses ready:%s", timeout, why)
	}
}

// WaitMembers waits until the member table on every running witness lists each running witness
// under its current identity (the leader records them shortly after it is elected).
func (c *Cluster) WaitMembers(timeout time.Duration) {
	c.tb.Helper()
	Eventually(c.tb, timeout, "member records of every running witness", func() bool {
		for _, i := range c.Running() {
			for _, j := range c.Running() {
				m, ok := c.Agents[i].FSM().Member(c.Configs[j].NodeName)
				if !ok || m.GetId() != c.Agents[j].ID() {
					return false
				}
			}
		}
		return true
	})
}

// Follower returns the index of some running witness that is not the leader.
func (c *Cluster) Follower(leader int) int {
	for _, i := range c.Running() {
		if i != leader {
			return i
		}
	}
	c.tb.Fatal("no follower running")
	return -1
}

// Context returns a context that ends with the test or after d.
func Context(tb testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	tb.Cleanup(cancel)
	return ctx
}
