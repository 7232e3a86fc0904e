// Package lab runs a whole local regent deployment on loopback for trying it out: three
// witnesses in three "regions", a PostgreSQL primary with two streaming standbys (one per
// region), optionally a `regent keeper` beside each PostgreSQL server, and BIND's named
// holding the cluster's DNS record when named is installed. It applies the "orders" cluster and
// waits until the witnesses observe it healthy, so that killing the primary (KillPrimary) shows a
// whole automatic failover. With keepers, KillPrimary plays the loss of the primary's host (its
// keeper and postmaster die together) and Revive brings the host back, to watch the old primary
// rejoin as a standby.
//
// Witness data (configs with their ports, Raft state) is kept in Options.Dir across runs;
// PostgreSQL and named are always created afresh, so on a restart in the same directory the lab
// deletes the cluster recorded by the earlier run (its nodes are gone) and applies it again
// with the new nodes.
package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/regentdb/regent/agent"
	"github.com/regentdb/regent/config"
	"github.com/regentdb/regent/dnstest"
	"github.com/regentdb/regent/internal/benchkeeper"
	"github.com/regentdb/regent/internal/freeport"
	"github.com/regentdb/regent/keeper"
	"github.com/regentdb/regent/pgtest"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
	"github.com/regentdb/regent/spec"
)

// Regions are the lab's three regions, one witness and one PostgreSQL node each.
var Regions = []string{"us-east", "eu-west", "ap-south"}

// The cluster the lab applies, and where its primary is published in DNS.
const (
	// ClusterName is the name of the lab's cluster.
	ClusterName = "orders"
	// Zone is the DNS zone the lab's named serves.
	Zone = "regent.test."
	// Record is the name that points at the cluster's primary.
	Record = "orders-primary." + Zone
	// KeyName is the TSIG key the witnesses sign DNS updates with.
	KeyName = "regent-key"
	// RecordTTL is the TTL of Record, in seconds.
	RecordTTL = 5
	// Cooldown is the lab's only departure from the default policy: the default 5m would
	// refuse a second failover for five minutes, and a lab is for trying things repeatedly.
	Cooldown = 30 * time.Second
)

// nodeNames are the PostgreSQL nodes, in the bench's order: the primary, then the standbys.
var nodeNames = []string{"pg-us", "pg-eu", "pg-ap"}

// DefaultHealthyTimeout bounds how long Start waits for the cluster to be observed healthy.
const DefaultHealthyTimeout = 2 * time.Minute

// Options configure a lab.
type Options struct {
	// Dir holds the witnesses' data, kept across runs; empty means a new temporary directory
	// removed by Stop. PostgreSQL and named get fresh directories under it on every run.
	Dir string
	// Witnesses is how many witnesses to start (3 or 5; default 3).
	Witnesses int
	// NoPostgres starts the witnesses only: no PostgreSQL, no named, no cluster applied.
	// Start then returns as soon as the witnesses listen (see WaitReady).
	NoPostgres bool
	// Keepers runs a keeper (package keeper, in this process, default settings) beside each
	// PostgreSQL server, with keeper_addr in the spec: the primary holds a quorum lease, a
	// crashed postmaster is restarted in place, failover fences through the old primary's
	// keeper, and an old primary rejoins as a standby when its host comes back.
	Keepers bool
	// Logger receives the witnesses' logs.
	Logger *slog.Logger
	// Progress, when set, receives one line per start-up stage.
	Progress io.Writer
	// HealthyTimeout bounds the wait for the cluster to be observed healthy (default
	// DefaultHealthyTimeout).
	HealthyTimeout time.Duration
}

// Node is one PostgreSQL node of the lab's cluster.
type Node struct {
	// Name is the node's name in the cluster spec (pg-us, pg-eu, pg-ap).
	Name string
	// Region is the node's region.
	Region string
	// Server is the running postmaster.
	Server *pgtest.Server
	// Keeper is the keeper beside the server (Options.Keepers), nil without keepers and while
	// the node's host is down (KillPrimary until Revive). KeeperConfig is its configuration.
	Keeper       *keeper.Keeper
	KeeperConfig keeper.Config
}

// Lab is a running local deployment.
type Lab struct {
	// Dir is the lab directory.
	Dir string
	// Agents are the running witnesses, in the order of Configs.
	Agents []*agent.Agent
	// Configs are the witnesses' configurations (also written to Dir/wN.yaml).
	Configs []config.Agent
	// Bench holds the PostgreSQL servers; nil with NoPostgres.
	Bench *pgtest.Bench
	// Nodes are the cluster's PostgreSQL nodes; empty with NoPostgres.
	Nodes []Node
	// DNS is the running named; nil when named is not installed or with NoPostgres.
	DNS *dnstest.Server
	// DNSSkipped says why DNS publishing is skipped (named missing); nil when DNS runs.
	DNSSkipped error
	// Spec is the cluster spec applied; nil with NoPostgres.
	Spec *regentv1.ClusterSpec
	// SpecPath is the file Spec was written to and read from.
	SpecPath string
	// Reapplied reports that the directory held the cluster from an earlier run, which Start
	// deleted and applied again with this run's nodes.
	Reapplied bool

	opts     Options
	tempDir  bool
	conn     *grpc.ClientConn
	stopOnce sync.Once
	stopErr  error
}

// Start launches the lab. With NoPostgres it returns once the witnesses listen (they
// bootstrap by themselves; WaitReady waits for that). Otherwise it also starts PostgreSQL
// (pg-us in us-east as the primary, pg-eu and pg-ap streaming from it) and named when
// installed, applies the cluster and returns once the witnesses observe every node reachable
// and both replication channels active. ctx bounds the start-up; on any error everything
// started so far is stopped.
func Start(ctx context.Context, opts Options) (*Lab, error) {
	if opts.Witnesses == 0 {
		opts.Witnesses = 3
	}
	if opts.Witnesses != 3 && opts.Witnesses != 5 {
		return nil, fmt.Errorf("the lab runs 3 or 5 witnesses, not %d", opts.Witnesses)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Progress == nil {
		opts.Progress = io.Discard
	}
	if opts.HealthyTimeout == 0 {
		opts.HealthyTimeout = DefaultHealthyTimeout
	}
	if !opts.NoPostgres {
		if _, err := pgtest.FindBin(); err != nil {
			return nil, fmt.Errorf("the lab needs the PostgreSQL server programs: %w (install them with apt-get install postgresql, or run the witness-only lab with --no-postgres)", err)
		}
	}
	l := &Lab{Dir: opts.Dir, opts: opts}
	if l.Dir == "" {
		d, err := os.MkdirTemp("", "regent-lab-")
		if err != nil {
			return nil, fmt.Errorf("create lab directory: %w", err)
		}
		l.Dir, l.tempDir = d, true
	} else if err := os.MkdirAll(l.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("create lab directory %s: %w", l.Dir, err)
	}
	if abs, err := filepath.Abs(l.Dir); err == nil {
		l.Dir = abs
	}
	if err := l.start(ctx); err != nil {
		l.Stop()
		return nil, err
	}
	return l, nil
}

func (l *Lab) progress(format string, args ...any) {
	fmt.Fprintf(l.opts.Progress, format+"\n", args...)
}

func (l *Lab) start(ctx context.Context) error {
	if !l.opts.NoPostgres {
		l.startDNS()
	}
	cfgs, err := l.configs(l.opts.Witnesses)
	if err != nil {
		return err
	}
	l.Configs = cfgs
	l.progress("starting %d witnesses", len(cfgs))
	for _, c := range cfgs {
		a, err := agent.Start(c, l.opts.Logger)
		if err != nil {
			return fmt.Errorf("start witness %s: %w", c.NodeName, err)
		}
		l.Agents = append(l.Agents, a)
	}
	if l.opts.NoPostgres {
		return nil
	}
	if err := l.startPostgres(ctx); err != nil {
		return err
	}
	readyCtx, cancel := context.WithTimeout(ctx, l.opts.HealthyTimeout)
	defer cancel()
	if err := l.WaitReady(readyCtx); err != nil {
		return err
	}
	if l.opts.Keepers {
		if err := l.keeperConfigs(); err != nil {
			return err
		}
	}
	if err := l.applyCluster(readyCtx); err != nil {
		return err
	}
	if l.opts.Keepers {
		if err := l.startKeepers(readyCtx); err != nil {
			return err
		}
	}
	l.progress("waiting until the witnesses observe %s healthy", ClusterName)
	return l.WaitHealthy(readyCtx)
}

// startDNS starts named with the cluster's record pointing at the primary (the bench's first
// server is always 127.0.0.1), or records why it is skipped.
func (l *Lab) startDNS() {
	if _, err := dnstest.FindNamed(); err != nil {
		l.DNSSkipped = err
		l.progress("named not found: DNS publishing is skipped (%v)", err)
		return
	}
	dir := filepath.Join(l.Dir, "dns")
	os.RemoveAll(dir) // named is fresh on every run
	if err := os.MkdirAll(dir, 0o700); err != nil {
		l.DNSSkipped = fmt.Errorf("create %s: %w", dir, err)
		return
	}
	l.progress("starting named for %s", Zone)
	ns, err := dnstest.New(dnstest.Options{Dir: dir, Zone: Zone, KeyName: KeyName,
		Records: []string{fmt.Sprintf("%s %d IN A 127.0.0.1", strings.TrimSuffix(Record, "."+Zone), RecordTTL)}})
	if err != nil {
		l.DNSSkipped = fmt.Errorf("named did not start: %w", err)
		l.progress("%v: DNS publishing is skipped", l.DNSSkipped)
		return
	}
	l.DNS = ns
}

// keyFile is where the TSIG secret of this run's named is kept for the witnesses (chmod 600).
func (l *Lab) keyFile() string { return filepath.Join(l.Dir, KeyName+".secret") }

// startPostgres creates the bench: a primary and two standbys, fresh on every run.
func (l *Lab) startPostgres(ctx context.Context) error {
	parent, err := l.postgresParent()
	if err != nil {
		return err
	}
	l.progress("starting PostgreSQL: a primary and two streaming standbys (initdb, pg_basebackup)")
	b, err := pgtest.New(ctx, pgtest.Options{Standbys: 2, Dir: parent})
	if err != nil {
		return fmt.Errorf("start PostgreSQL: %w", err)
	}
	l.Bench = b
	for i, s := range b.Servers() {
		l.Nodes = append(l.Nodes, Node{Name: nodeNames[i], Region: Regions[i], Server: s})
	}
	return nil
}

// keeperConfigs chooses each node's keeper configuration (its address goes into the spec).
// Keeper state is fresh on every run, like PostgreSQL: its tokens and epochs belong to it.
func (l *Lab) keeperConfigs() error {
	var ws, gossipAddrs []string
	for _, c := range l.Configs {
		ws = append(ws, c.GRPCAddr)
		gossipAddrs = append(gossipAddrs, c.GossipAddr)
	}
	for i := range l.Nodes {
		n := &l.Nodes[i]
		cfg, err := benchkeeper.Config(l.Bench, n.Server, benchkeeper.Options{Cluster: ClusterName, Node: n.Name,
			Witnesses: ws, StateDir: filepath.Join(l.Bench.Dir, "keeper-"+n.Name), GossipJoin: gossipAddrs})
		if err != nil {
			return fmt.Errorf("keeper of %s: %w", n.Name, err)
		}
		n.KeeperConfig = cfg
	}
	return nil
}

// startKeepers starts a keeper beside each node (the cluster is applied, so the witnesses
// grant the primary's lease at once) and waits until the primary's keeper holds its lease.
func (l *Lab) startKeepers(ctx context.Context) error {
	l.progress("starting a keeper beside each PostgreSQL server")
	for i := range l.Nodes {
		if err := l.startKeeper(&l.Nodes[i]); err != nil {
			return err
		}
	}
	p := l.Node(l.Spec.GetPrimary())
	return poll(ctx, func() (bool, string) {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if st := p.Keeper.Status(sctx, false); !st.HoldsLease || !st.Answering || st.ReadOnly {
			return false, fmt.Sprintf("lease held %v, answering %v, read-only %v", st.HoldsLease, st.Answering, st.ReadOnly)
		}
		return true, ""
	}, "the primary's keeper holding its lease")
}

// startKeeper starts n's keeper.
func (l *Lab) startKeeper(n *Node) error {
	k, err := keeper.Start(n.KeeperConfig, l.opts.Logger.With("keeper", n.Name))
	if err != nil {
		return fmt.Errorf("start the keeper of %s: %w", n.Name, err)
	}
	n.Keeper = k
	return nil
}

// postgresParent returns a fresh directory for the bench under the lab directory, or under the
// system's temporary directory when running as root and the postgres user cannot reach the
// lab directory.
func (l *Lab) postgresParent() (string, error) {
	if l.tempDir {
		// MkdirTemp made the lab directory 0700; the postgres user must pass through it. The
		// witness configs and the TSIG secret inside stay 0600.
		if err := os.Chmod(l.Dir, 0o711); err != nil {
			return "", fmt.Errorf("make %s traversable for PostgreSQL: %w", l.Dir, err)
		}
	}
	dir := filepath.Join(l.Dir, "postgres")
	if os.Geteuid() == 0 && !traversable(l.Dir) {
		d, err := os.MkdirTemp("", "regent-lab-postgres-")
		if err != nil {
			return "", fmt.Errorf("create a directory for PostgreSQL: %w", err)
		}
		dir = d
		l.progress("the postgres user cannot reach %s: PostgreSQL's files go under %s", l.Dir, dir)
	} else {
		os.RemoveAll(dir) // PostgreSQL is fresh on every run
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return "", fmt.Errorf("create %s: %w", dir, err)
		}
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", fmt.Errorf("make %s traversable for PostgreSQL: %w", dir, err)
	}
	return dir, nil
}

// traversable reports whether others may pass through dir and every directory above it.
func traversable(dir string) bool {
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return false
		}
		if d == filepath.Dir(d) {
			return true
		}
	}
}

// configs returns the witnesses' configurations, written to Dir/wN.yaml. An earlier run's
// files in the same directory keep their addresses, so a restarted lab finds its own cluster
// again; the rest of each file is rewritten for this run (this run's TSIG key, or none).
func (l *Lab) configs(n int) ([]config.Agent, error) {
	if l.DNS != nil {
		if err := os.WriteFile(l.keyFile(), []byte(l.DNS.Key().Secret+"\n"), 0o600); err != nil {
			return nil, fmt.Errorf("write the TSIG secret: %w", err)
		}
		if err := os.Chmod(l.keyFile(), 0o600); err != nil {
			return nil, fmt.Errorf("write the TSIG secret: %w", err)
		}
	}
	var out []config.Agent
	var joins []string
	for i := range n {
		name := fmt.Sprintf("w%d", i+1)
		path := filepath.Join(l.Dir, name+".yaml")
		var addrs [4]string
		if data, err := os.ReadFile(path); err == nil {
			old, err := config.Parse(data, path)
			if err != nil {
				return nil, fmt.Errorf("lab directory %s holds a bad config (remove the directory to start afresh): %w", l.Dir, err)
			}
			addrs = [4]string{old.RaftAddr, old.GossipAddr, old.GRPCAddr, old.HTTPAddr}
		} else {
			for j := range addrs {
				a, err := freeport.Addr()
				if err != nil {
					return nil, err
				}
				addrs[j] = a
			}
		}
		text := fmt.Sprintf(`# Written by regent lab; addresses are kept across runs in this directory.
node_name: %s
region: %s
data_dir: %s
raft_addr: %s
gossip_addr: %s
grpc_addr: %s
http_addr: %s
bootstrap_expect: %d
raft_multiplier: 0.5
postgres: {user: %s, database: postgres, sslmode: disable}
`, name, Regions[i%len(Regions)], filepath.Join(l.Dir, name), addrs[0], addrs[1], addrs[2], addrs[3], n, pgtest.SuperUser)
		if l.DNS != nil {
			text += fmt.Sprintf("dns_keys:\n  %s: {algorithm: %s, secret_file: %s}\n", KeyName, l.DNS.Key().Algorithm, l.keyFile())
		}
		c, err := config.Parse([]byte(text), path)
		if err != nil {
			return nil, fmt.Errorf("lab config for %s: %w", name, err)
		}
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			return nil, fmt.Errorf("write lab config: %w", err)
		}
		out = append(out, *c)
		joins = append(joins, c.GossipAddr)
	}
	for i := range out {
		for j, g := range joins {
			if i != j {
				out[i].Join = append(out[i].Join, g)
			}
		}
	}
	return out, nil
}

// specYAML is the cluster spec for this run's nodes, as an operator would write it.
func (l *Lab) specYAML() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Applied by regent lab. PostgreSQL is fresh on every run, so the ports change.\nname: %s\nprimary: %s\nnodes:\n", ClusterName, l.Nodes[0].Name)
	for _, n := range l.Nodes {
		ka := ""
		if n.KeeperConfig.ListenGRPC != "" {
			ka = fmt.Sprintf(", keeper_addr: %q", n.KeeperConfig.ListenGRPC)
		}
		fmt.Fprintf(&b, "  - {name: %s, region: %s, host: %s, port: %d%s}\n", n.Name, n.Region, n.Server.Host, n.Server.Port, ka)
	}
	fmt.Fprintf(&b, "policy:            # defaults, but a shorter cooldown so that a second failover is possible soon\n  cooldown: %s\n", Cooldown)
	if l.DNS != nil {
		fmt.Fprintf(&b, "dns: {server: %q, zone: %s, record: %s, ttl: %d, tsig_key: %s}\n", l.DNS.Addr(), Zone, Record, RecordTTL, KeyName)
	}
	return b.String()
}

// client returns the gRPC client of the first witness (writes are forwarded to the leader).
func (l *Lab) client() (regentv1.RegentClient, error) {
	if l.conn == nil {
		conn, err := grpc.NewClient(l.Configs[0].GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, fmt.Errorf("connect to witness %s: %w", l.Configs[0].NodeName, err)
		}
		l.conn = conn
	}
	return regentv1.NewRegentClient(l.conn), nil
}

// applyCluster writes the spec to Dir/orders.yaml, reads it back as `regent cluster apply`
// would, deletes a cluster left by an earlier run and applies this one.
func (l *Lab) applyCluster(ctx context.Context) error {
	l.SpecPath = filepath.Join(l.Dir, ClusterName+".yaml")
	if err := os.WriteFile(l.SpecPath, []byte(l.specYAML()), 0o644); err != nil {
		return fmt.Errorf("write the cluster spec: %w", err)
	}
	sp, err := spec.ParseFile(l.SpecPath)
	if err != nil {
		return fmt.Errorf("the lab's own cluster spec is invalid (a bug in regent lab): %w", err)
	}
	l.Spec = sp
	c, err := l.client()
	if err != nil {
		return err
	}
	if _, ok := l.cluster(); ok {
		l.progress("deleting cluster %s of an earlier run (its PostgreSQL nodes are gone)", ClusterName)
		if err := retry(ctx, func(ctx context.Context) error {
			_, err := c.DeleteCluster(ctx, &regentv1.DeleteClusterRequest{Name: ClusterName})
			return err
		}); err != nil {
			return fmt.Errorf("delete cluster %s of an earlier run: %w (remove the lab directory %s to start afresh)", ClusterName, err, l.Dir)
		}
		l.Reapplied = true
	}
	l.progress("applying cluster %s from %s", ClusterName, l.SpecPath)
	if err := retry(ctx, func(ctx context.Context) error {
		_, err := c.ApplyCluster(ctx, &regentv1.ApplyClusterRequest{Spec: sp})
		return err
	}); err != nil {
		return fmt.Errorf("apply cluster %s: %w", ClusterName, err)
	}
	return nil
}

// retry calls fn until it succeeds, fails with an error other than Unavailable (an election)
// or FailedPrecondition (a saga still open), or ctx ends.
func retry(ctx context.Context, fn func(context.Context) error) error {
	for {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := fn(cctx)
		cancel()
		if err == nil {
			return nil
		}
		if c := status.Code(err); c != codes.Unavailable && c != codes.FailedPrecondition && c != codes.DeadlineExceeded {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// WaitReady waits until every witness knows a leader and has caught up.
func (l *Lab) WaitReady(ctx context.Context) error {
	return poll(ctx, func() (bool, string) {
		for _, a := range l.Agents {
			if ok, why := a.Ready(); !ok {
				return false, a.Name() + ": " + why
			}
		}
		return true, ""
	}, "witnesses ready")
}

// poll checks cond every 50ms until it holds or ctx ends; the error names what was awaited and
// cond's last reason.
func poll(ctx context.Context, cond func() (bool, string), what string) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, why := cond()
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (last: %s)", what, ctx.Err(), why)
		case <-tick.C:
		}
	}
}

// State returns the replicated state as the current leader holds it (any witness's while
// there is no leader).
func (l *Lab) State() *regentv1.State {
	var pick *agent.Agent
	for _, a := range l.Agents {
		if pick == nil || a.Store().IsLeader() {
			pick = a
		}
	}
	if pick == nil {
		return &regentv1.State{}
	}
	st, _ := pick.FSM().State()
	return st
}

func (l *Lab) cluster() (*regentv1.Cluster, bool) {
	for _, c := range l.State().GetClusters() {
		if c.GetName() == ClusterName {
			return c, true
		}
	}
	return nil, false
}

// Healthy reports whether the witnesses observe the cluster healthy: every node reachable by
// every witness with the role it should have, and every replication channel active. When not,
// it says what is missing.
func (l *Lab) Healthy() (bool, string) {
	if l.Spec == nil {
		return false, "no cluster applied"
	}
	c, ok := l.cluster()
	if !ok {
		return false, "cluster " + ClusterName + " not in the state"
	}
	for _, n := range c.GetNodes() {
		var ns *regentv1.NodeStatus
		for _, s := range c.GetNodeStatus() {
			if s.GetName() == n.GetName() {
				ns = s
			}
		}
		up := 0
		for _, v := range ns.GetVotes() {
			if v.GetReachable() {
				up++
			}
		}
		if up != len(l.Agents) {
			return false, fmt.Sprintf("%s reachable for %d of %d witnesses", n.GetName(), up, len(l.Agents))
		}
		want := regentv1.NodeRole_NODE_ROLE_REPLICA
		if n.GetName() == c.GetPrimary() {
			want = regentv1.NodeRole_NODE_ROLE_PRIMARY
		}
		if ns.GetRole() != want {
			return false, fmt.Sprintf("%s is %v, want %v", n.GetName(), ns.GetRole(), want)
		}
	}
	active := 0
	for _, ch := range l.State().GetChannels() {
		if ch.GetCluster() != ClusterName {
			continue
		}
		if ch.GetStatus() != regentv1.ChannelStatus_CHANNEL_STATUS_ACTIVE {
			return false, fmt.Sprintf("channel %s → %s is %v", ch.GetPrimaryRegion(), ch.GetSecondaryRegion(), ch.GetStatus())
		}
		active++
	}
	if want := len(c.GetNodes()) - 1; active != want {
		return false, fmt.Sprintf("%d of %d channels active", active, want)
	}
	return true, ""
}

// WaitHealthy waits until Healthy holds.
func (l *Lab) WaitHealthy(ctx context.Context) error {
	return poll(ctx, l.Healthy, "cluster "+ClusterName+" observed healthy")
}

// Node returns the lab's PostgreSQL node called name, or nil.
func (l *Lab) Node(name string) *Node {
	for i := range l.Nodes {
		if l.Nodes[i].Name == name {
			return &l.Nodes[i]
		}
	}
	return nil
}

// Primary returns the node the replicated state holds as the cluster's primary, or nil.
func (l *Lab) Primary() *Node {
	c, ok := l.cluster()
	if !ok {
		return nil
	}
	return l.Node(c.GetPrimary())
}

// Killed says what KillPrimary did.
type Killed struct {
	// Node is the node whose postmaster was killed.
	Node Node
	// PID is the postmaster's process id.
	PID int
	// At is when SIGKILL was sent.
	At time.Time
	// Host reports that the node's keeper died too: the whole host was lost.
	Host bool
}

// KillPrimary kills the current primary's postmaster with SIGKILL, as a crash would, and
// returns once its port refuses connections. With keepers it plays the loss of the whole host:
// the primary's keeper dies in the same instant (nothing fenced), so that it cannot restart the
// postmaster in place. The witnesses are not told: they find out by probing, and fail over.
func (l *Lab) KillPrimary() (Killed, error) { return l.killPrimary(true) }

// CrashPrimary kills the current primary's postmaster with SIGKILL and leaves its keeper (if
// any) running: a crash, which the keeper answers by restarting the server in place, with no
// failover. Without keepers it is KillPrimary.
func (l *Lab) CrashPrimary() (Killed, error) { return l.killPrimary(false) }

func (l *Lab) killPrimary(host bool) (Killed, error) {
	p := l.Primary()
	if p == nil {
		return Killed{}, errors.New("no primary to kill: the lab runs no PostgreSQL (--no-postgres) or no cluster is applied")
	}
	pid := p.Server.PostmasterPID()
	if pid == 0 {
		return Killed{}, fmt.Errorf("primary %s is not running (killed already?); wait for the failover to pick a new one", p.Name)
	}
	k := Killed{Node: *p, PID: pid, At: time.Now()}
	var done chan struct{}
	if p.Keeper != nil && host {
		done = make(chan struct{})
		go func(kp *keeper.Keeper) { kp.Kill(); close(done) }(p.Keeper)
		p.Keeper, k.Host = nil, true
	}
	err := p.Server.Kill9()
	if done != nil {
		<-done
	}
	if err != nil {
		return k, fmt.Errorf("kill primary %s: %w", p.Name, err)
	}
	return k, nil
}

// Down returns the nodes whose host KillPrimary took down and Revive has not brought back.
func (l *Lab) Down() []string {
	var out []string
	for _, n := range l.Nodes {
		if n.KeeperConfig.ListenGRPC != "" && n.Keeper == nil {
			out = append(out, n.Name)
		}
	}
	return out
}

// Revive brings a node's host back after KillPrimary: its keeper starts again and, as the node
// is no longer the designated primary, never lets its server take a write; the leader then has
// it rejoin as a standby of the new primary (rewound, or re-cloned when a rewind is impossible).
func (l *Lab) Revive(name string) error {
	n := l.Node(name)
	switch {
	case n == nil:
		return fmt.Errorf("no node %q in the lab", name)
	case n.KeeperConfig.ListenGRPC == "":
		return errors.New("the lab runs without keepers (--no-keepers): nothing brings a lost host back")
	case n.Keeper != nil:
		return fmt.Errorf("the host of %s is up already", name)
	}
	return l.startKeeper(n)
}

// Events returns the cluster's failover events, oldest first.
func (l *Lab) Events() []*regentv1.FailoverEvent {
	var out []*regentv1.FailoverEvent
	for _, ev := range l.State().GetFailoverEvents() {
		if ev.GetCluster() == ClusterName {
			out = append(out, ev)
		}
	}
	return out
}

// LastEventID returns the id of the cluster's newest failover event, or 0.
func (l *Lab) LastEventID() uint64 {
	var id uint64
	for _, ev := range l.Events() {
		id = max(id, ev.GetId())
	}
	return id
}

// WaitFailover waits until a failover event newer than event id after has finished (completed
// or aborted) and returns it.
func (l *Lab) WaitFailover(ctx context.Context, after uint64) (*regentv1.FailoverEvent, error) {
	var done *regentv1.FailoverEvent
	err := poll(ctx, func() (bool, string) {
		why := "no failover event yet"
		for _, ev := range l.Events() {
			if ev.GetId() <= after {
				continue
			}
			s := ev.GetStep()
			if s == regentv1.FailoverStep_FAILOVER_STEP_COMPLETED || s == regentv1.FailoverStep_FAILOVER_STEP_ABORTED {
				done = ev
				return true, ""
			}
			why = fmt.Sprintf("event %d at step %v", ev.GetId(), s)
		}
		if c, ok := l.cluster(); ok && c.GetRefusal() != "" {
			why += "; refusal: " + c.GetRefusal()
		}
		return false, why
	}, "a failover")
	return done, err
}

// WaitRejoin waits until node, the old primary of the cluster's newest failover away from it,
// has rejoined as a standby and caught up, and returns a one-line summary (method, exact loss);
// it fails when the rejoin is recorded as failed or ctx ends.
func (l *Lab) WaitRejoin(ctx context.Context, node string) (string, error) {
	var msg string
	err := poll(ctx, func() (bool, string) {
		var ev *regentv1.FailoverEvent
		for _, e := range l.Events() {
			if e.GetFromNode() == node && e.GetStep() == regentv1.FailoverStep_FAILOVER_STEP_COMPLETED {
				ev = e
			}
		}
		if ev == nil {
			return false, "no completed failover away from " + node
		}
		rj := ev.GetRejoin()
		switch rj.GetStatus() {
		case regentv1.RejoinStatus_REJOIN_STATUS_CAUGHT_UP:
			loss := "unknown"
			if ev.DataLossBytes != nil {
				loss = fmt.Sprintf("%d bytes", ev.GetDataLossBytes())
				if !ev.GetDataLossExact() {
					loss += " (estimated)"
				}
			}
			if ev.LostTransactions != nil {
				loss += fmt.Sprintf(", %d transactions", ev.GetLostTransactions())
			}
			msg = fmt.Sprintf("%s rejoined as a standby of %s (%s) and caught up; data loss of failover %d: %s",
				node, ev.GetToNode(), rj.GetMethod(), ev.GetId(), loss)
			return true, ""
		case regentv1.RejoinStatus_REJOIN_STATUS_FAILED:
			msg = "failed: " + rj.GetDetail()
			return true, ""
		}
		return false, fmt.Sprintf("rejoin %s: %s", rj.GetStatus(), rj.GetDetail())
	}, node+" rejoining")
	if err == nil && strings.HasPrefix(msg, "failed: ") {
		return "", fmt.Errorf("the rejoin of %s %s", node, msg)
	}
	return msg, err
}

// Describe writes the lab's addresses and how to talk to it.
func (l *Lab) Describe(w io.Writer) {
	fmt.Fprintf(w, "regent lab: %d witnesses, data in %s\n", len(l.Configs), l.Dir)
	for _, c := range l.Configs {
		fmt.Fprintf(w, "  %-3s %-9s grpc %-16s http %-16s raft %-16s gossip %s\n", c.NodeName, c.Region, c.GRPCAddr, c.HTTPAddr, c.RaftAddr, c.GossipAddr)
	}
	if l.opts.NoPostgres {
		fmt.Fprintf(w, "\nNo PostgreSQL (--no-postgres). Try, in another shell:\n  export REGENT_ADDR=%s\n  regent status\n  regent cluster apply -f %s\n\n",
			l.Configs[0].GRPCAddr, filepath.Join(l.Dir, "orders.yaml"))
		return
	}
	fmt.Fprintf(w, "\nPostgreSQL %d (fresh each run, files in %s):\n", l.Bench.MajorVersion(), l.Bench.Dir)
	for i, n := range l.Nodes {
		role := "standby"
		if i == 0 {
			role = "primary at start"
		}
		fmt.Fprintf(w, "  %-5s %-9s %s:%-5d %-16s psql \"host=%s port=%d user=%s dbname=postgres\"\n",
			n.Name, n.Region, n.Server.Host, n.Server.Port, role, n.Server.Host, n.Server.Port, pgtest.SuperUser)
	}
	if l.opts.Keepers {
		fmt.Fprintln(w, "\nKeepers (quorum lease, fencing, rejoin; Patroni-compatible health checks):")
		for _, n := range l.Nodes {
			fmt.Fprintf(w, "  %-5s keeper_addr %-16s curl -si http://%s/primary\n", n.Name, n.KeeperConfig.ListenGRPC, n.KeeperConfig.ListenHTTP)
		}
	}
	if l.DNS != nil {
		host, port, _ := strings.Cut(l.DNS.Addr(), ":")
		fmt.Fprintf(w, "\nDNS: named at %s serves %s; %s points at the primary:\n  dig @%s -p %s %s A +short\n",
			l.DNS.Addr(), Zone, Record, host, port, Record)
	} else {
		fmt.Fprintf(w, "\nDNS: publishing skipped: %v\n", l.DNSSkipped)
	}
	fmt.Fprintf(w, "\nCluster %s applied from %s", ClusterName, l.SpecPath)
	if l.Reapplied {
		fmt.Fprint(w, " (the earlier run's cluster was deleted: its nodes are gone)")
	}
	fmt.Fprintf(w, ".\nTry, in another shell:\n  export REGENT_ADDR=%s\n  regent status\n  regent events --watch\n\n", l.Configs[0].GRPCAddr)
}

// WriteExampleSpec writes an example cluster spec into the lab directory, for the
// witness-only lab (the full lab writes the spec it applies there instead).
func (l *Lab) WriteExampleSpec() error {
	if l.Spec != nil {
		return nil
	}
	const spec = `name: orders
primary: pg-us
nodes:
  - {name: pg-us, region: us-east,  host: 127.0.0.1, port: 5432}
  - {name: pg-eu, region: eu-west,  host: 127.0.0.1, port: 5433}
  - {name: pg-ap, region: ap-south, host: 127.0.0.1, port: 5434}
policy: {}
`
	return os.WriteFile(filepath.Join(l.Dir, "orders.yaml"), []byte(spec), 0o644)
}

// PIDs returns the process ids of everything the lab started outside this process: the
// postmasters and named. The witnesses run inside this process.
func (l *Lab) PIDs() []int {
	var pids []int
	for _, n := range l.Nodes {
		if pid := n.Server.PID(); pid != 0 {
			pids = append(pids, pid)
		}
	}
	if l.DNS != nil && l.DNS.Running() {
		pids = append(pids, l.DNS.PID())
	}
	return pids
}

// Stop shuts the witnesses down, stops PostgreSQL and named and removes their files (and the
// whole directory when it was temporary). It returns an error when something may have been
// left behind (a server that did not stop, files not removed); a witness's own shutdown
// trouble is logged. It is safe to call more than once.
func (l *Lab) Stop() error {
	l.stopOnce.Do(func() {
		var errs []error
		// Keepers first: a keeper left running would restart the servers Bench.Close stops.
		for i := range l.Nodes {
			if k := l.Nodes[i].Keeper; k != nil {
				if err := k.Shutdown(); err != nil {
					l.opts.Logger.Warn("keeper shutdown", "node", l.Nodes[i].Name, "err", err)
				}
				l.Nodes[i].Keeper = nil
			}
		}
		for _, a := range l.Agents {
			// A witness always stops, even when part of its shutdown went wrong (a gossip
			// leave that timed out on a busy machine): that is worth a warning, not a failure.
			if err := a.Shutdown(); err != nil {
				l.opts.Logger.Warn("witness shutdown", "witness", a.Name(), "err", err)
			}
		}
		if l.conn != nil {
			l.conn.Close()
		}
		if l.Bench != nil {
			if err := l.Bench.Close(); err != nil {
				errs = append(errs, fmt.Errorf("stop PostgreSQL: %w", err))
			}
			os.Remove(filepath.Dir(l.Bench.Dir)) // the per-run parent, now empty
		}
		if l.DNS != nil {
			l.DNS.Stop()
			os.Remove(filepath.Join(l.Dir, "dns"))
			os.Remove(l.keyFile())
		}
		if l.tempDir {
			errs = append(errs, os.RemoveAll(l.Dir))
		}
		l.stopErr = errors.Join(errs...)
	})
	return l.stopErr
}
