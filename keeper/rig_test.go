package keeper

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/regentdb/regent/config"
	"github.com/regentdb/regent/internal/freeport"
	"github.com/regentdb/regent/internal/witnesstest"
	"github.com/regentdb/regent/pgtest"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// wait bounds every poll in these tests; they poll conditions, never sleep to synchronise.
const wait = 30 * time.Second

// Test lease settings: the default ttl, with a wide fence margin so that the SQL fence fits
// even on a loaded machine running -race tests in parallel.
const (
	testTTL    = 2 * time.Second
	testMargin = 800 * time.Millisecond
)

// rig is a real PostgreSQL primary (pg-us) with two streaming standbys (pg-eu, pg-ap), each on
// its own 127.0.0.N, and three real witnesses over loopback with the orders cluster applied
// (paused, so that no automatic failover interferes with what a test does to the primary).
type rig struct {
	bench   *pgtest.Bench
	c       *witnesstest.Cluster
	primary *pgtest.Server
	eu, ap  *pgtest.Server
	nodes   map[string]*pgtest.Server
	// ttl is the lease of the cluster policy and of the keepers.
	ttl time.Duration
}

func startRig(t *testing.T) *rig { return startRigTTL(t, testTTL) }

// startRigTTL is startRig with the cluster's (and the keepers') lease_ttl.
func startRigTTL(t *testing.T, ttl time.Duration) *rig { return startRigWith(t, ttl, nil) }

// startRigWith is startRigTTL with extra postgresql.conf settings on every server.
func startRigWith(t *testing.T, ttl time.Duration, settings map[string]string) *rig {
	t.Helper()
	b := pgtest.Start(t, pgtest.Options{Standbys: 2, Settings: settings})
	r := &rig{bench: b, primary: b.Servers()[0], eu: b.Servers()[1], ap: b.Servers()[2], ttl: ttl}
	r.nodes = map[string]*pgtest.Server{"pg-us": r.primary, "pg-eu": r.eu, "pg-ap": r.ap}
	// Servers the keeper restarted with pg_ctl are not pgtest's children; the bench's Close
	// stops them too (the keepers, registered later, are shut down before it runs).
	r.c = witnesstest.Start(t, 3, witnesstest.Options{})
	leader := r.c.WaitLeader(wait)
	r.c.WaitReady(wait)
	sp := &regentv1.ClusterSpec{
		Name: "orders", Primary: "pg-us",
		Policy: &regentv1.Policy{ProbeIntervalMs: 200, ProbeTimeoutMs: 150, DownAfterMs: 1000, LeaseTtlMs: ttl.Milliseconds()},
		Nodes: []*regentv1.NodeSpec{
			{Name: "pg-us", Region: "us-east", Host: r.primary.Host, Port: uint32(r.primary.Port)},
			{Name: "pg-eu", Region: "eu-west", Host: r.eu.Host, Port: uint32(r.eu.Port)},
			{Name: "pg-ap", Region: "ap-south", Host: r.ap.Host, Port: uint32(r.ap.Port)},
		},
	}
	ctx := witnesstest.Context(t, wait)
	retry(t, ctx, "apply the cluster", func() error {
		_, err := r.c.Client(leader).ApplyCluster(ctx, &regentv1.ApplyClusterRequest{Spec: sp})
		return err
	})
	retry(t, ctx, "pause the cluster", func() error {
		_, err := r.c.Client(leader).Pause(ctx, &regentv1.PauseRequest{Cluster: "orders", Reason: "keeper tests act on the primary themselves"})
		return err
	})
	witnesstest.Eventually(t, wait, "every witness knows the paused cluster", func() bool {
		for _, i := range r.c.Running() {
			cl, ok := r.c.Agents[i].FSM().Cluster("orders")
			if !ok || !cl.GetPaused() {
				return false
			}
		}
		return true
	})
	return r
}

// waitGrants waits until witness i grants pg-us's lease (a restarted witness refuses while it
// has not yet applied the cluster from its log).
func (r *rig) waitGrants(t *testing.T, i int) {
	t.Helper()
	witnesstest.Eventually(t, wait, fmt.Sprintf("witness %d granting the lease", i), func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		resp, err := r.c.Client(i).RenewLease(ctx, &regentv1.RenewLeaseRequest{Cluster: "orders", Node: "pg-us", Epoch: 1})
		return err == nil && resp.GetGranted()
	})
}

// retry calls f until it succeeds, retrying while the witnesses answer Unavailable (an
// election), as a client is expected to.
func retry(t *testing.T, ctx context.Context, what string, f func() error) {
	t.Helper()
	for {
		err := f()
		if err == nil {
			return
		}
		if status.Code(err) != codes.Unavailable || ctx.Err() != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
}

// config is a keeper configuration for node, with listeners on free loopback ports.
func (r *rig) config(t *testing.T, node string) Config {
	t.Helper()
	s := r.nodes[node]
	var ws []string
	for _, wc := range r.c.Configs {
		ws = append(ws, wc.GRPCAddr)
	}
	state := filepath.Join(t.TempDir(), "keeper-"+node)
	// freeport never hands out a port twice in this process, so a keeper cannot take the
	// port of a witness that a test stops and starts again.
	listen := func() string {
		a, err := freeport.Addr()
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	return Config{
		NodeName: node, Cluster: "orders", DataDir: s.DataDir, BinDir: r.bench.BinDir(),
		Host: s.Host, Port: uint16(s.Port),
		Postgres: config.Postgres{User: pgtest.BootstrapUser, Database: "postgres", SSLMode: "disable"},
		RunAs:    "postgres",
		// pgtest passes the per-node settings on the command line; so must pg_ctl.
		PostgresOptions: []string{"-p", strconv.Itoa(s.Port), "-c", "listen_addresses=" + s.Host,
			"-c", "unix_socket_directories=" + s.Dir, "-c", "cluster_name=" + s.Name},
		PostgresLog:  filepath.Join(s.Dir, "keeper-postgres.log"),
		StartTimeout: config.Duration{Duration: time.Minute},
		Witnesses:    ws,
		ListenGRPC:   listen(),
		ListenHTTP:   listen(),
		StateDir:     state,
		LeaseTTL:     config.Duration{Duration: r.ttl},
		LeaseDrift:   0.05,
		FenceMargin:  config.Duration{Duration: testMargin},
		Log:          config.Log{Format: "text", Level: "debug"},
	}
}

// testLog sends a keeper's log to the test's log (while the test runs).
type testLog struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
}

func (w *testLog) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

// startKeeper starts a keeper with cfg and shuts it down when the test ends.
func startKeeper(t *testing.T, cfg Config) *Keeper {
	t.Helper()
	var out io.Writer = io.Discard
	if testing.Verbose() || os.Getenv("REGENT_TEST_LOG") != "" {
		w := &testLog{t: t}
		t.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
		out = w
	}
	k, err := Start(cfg, slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatalf("start keeper %s: %v", cfg.NodeName, err)
	}
	t.Cleanup(func() {
		if err := k.Shutdown(); err != nil {
			t.Logf("keeper shutdown: %v", err)
		}
	})
	return k
}

// get returns the status code of a health endpoint and its body.
func get(t *testing.T, k *Keeper, path string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+k.HTTPAddr()+path, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// waitCode polls path until it answers code.
func waitCode(t *testing.T, k *Keeper, path string, code int) {
	t.Helper()
	var last string
	witnesstest.Eventually(t, wait, fmt.Sprintf("%s answering %d", path, code), func() bool {
		c, body := get(t, k, path)
		last = fmt.Sprintf("%d %s", c, body)
		return c == code
	})
	_ = last
}

// write commits a row on s from a new session; it returns the error (25006 when fenced).
func write(ctx context.Context, s *pgtest.Server) error {
	return s.Exec(ctx, "CREATE TABLE IF NOT EXISTS keeper_probe (at timestamptz); INSERT INTO keeper_probe VALUES (now())")
}

// isReadOnlyErr reports SQLSTATE 25006 (read_only_sql_transaction).
func isReadOnlyErr(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "25006"
}

// keeperClient dials a keeper's gRPC API.
func keeperClient(t *testing.T, k *Keeper) regentv1.KeeperClient {
	t.Helper()
	conn, err := grpc.NewClient(k.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return regentv1.NewKeeperClient(conn)
}

// waitLease waits until k holds the lease and its server takes writes (/primary is 200).
func waitLease(t *testing.T, k *Keeper) {
	t.Helper()
	waitCode(t, k, "/primary", http.StatusOK)
}

// postmasterPID reads the running postmaster's pid from postmaster.pid.
func postmasterPID(t *testing.T, s *pgtest.Server) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.DataDir, "postmaster.pid"))
	if err != nil {
		t.Fatalf("read postmaster.pid of %s: %v", s, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil {
		t.Fatalf("postmaster.pid of %s: %v", s, err)
	}
	return pid
}
