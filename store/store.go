// Package store owns Raft on a witness: the boltdb log and stable store, file snapshots, the TCP
// transport, bootstrap, membership changes, and proposing commands to the FSM. Everything else
// talks to Raft through it.
package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"google.golang.org/protobuf/proto"

	"github.com/regentdb/regent/fsm"
	"github.com/regentdb/regent/logging"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// Sentinel errors; match them with errors.Is.
var (
	// ErrNotLeader means this witness is not the Raft leader; forward the request or retry.
	ErrNotLeader = errors.New("this witness is not the Raft leader")
	// ErrNoLeader means no leader is known (an election is under way); retry shortly.
	ErrNoLeader = errors.New("no Raft leader is known (election in progress); retry shortly")
	// ErrClosed means the store was shut down.
	ErrClosed = errors.New("the store is closed")
)

// Config configures a Store.
type Config struct {
	// ID is the Raft server ID (the witness's stable identity).
	ID string
	// RaftAddr is the host:port to bind and advertise.
	RaftAddr string
	// DataDir holds raft.db and snapshots/.
	DataDir string
	// Multiplier scales hashicorp/raft's default timings.
	Multiplier float64
	// SnapshotThreshold and SnapshotInterval tune snapshotting (0 = raft's defaults).
	SnapshotThreshold uint64
	SnapshotInterval  time.Duration
	// TrailingLogs is how many entries stay in the log after a snapshot (0 = raft's default).
	TrailingLogs uint64
	// OnApply, if set, observes how long each proposal took to commit and apply (for metrics).
	OnApply func(time.Duration)
	Logger  *slog.Logger
}

// Store is a running Raft node with its FSM.
type Store struct {
	cfg       Config
	raft      *raft.Raft
	fsm       *fsm.FSM
	bolt      *raftboltdb.BoltStore
	transport *raft.NetworkTransport
	logger    *slog.Logger

	obsCh    chan raft.Observation
	observer *raft.Observer

	mu            sync.Mutex
	leaderChanges uint64
	leaderWatch   []chan bool

	closeOnce sync.Once
	closed    chan struct{}
}

// Open starts Raft with the given FSM, reading any existing state from cfg.DataDir. It does not
// bootstrap: call Bootstrap when the agent decides it is time.
func Open(cfg Config, f *fsm.FSM) (*Store, error) {
	if cfg.ID == "" || cfg.RaftAddr == "" || cfg.DataDir == "" {
		return nil, fmt.Errorf("store config needs ID, RaftAddr and DataDir (got %+v)", cfg)
	}
	if cfg.Multiplier <= 0 {
		cfg.Multiplier = 1
	}
	logger := cfg.Logger
	if logger == nil {
		logger = logging.Discard()
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data_dir %s: %w", cfg.DataDir, err)
	}
	hl := logging.NewHCLog(logger, "raft")

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.ID)
	rc.Logger = hl
	scale := func(d time.Duration) time.Duration { return time.Duration(float64(d) * cfg.Multiplier) }
	rc.HeartbeatTimeout = scale(rc.HeartbeatTimeout)
	rc.ElectionTimeout = scale(rc.ElectionTimeout)
	rc.LeaderLeaseTimeout = scale(rc.LeaderLeaseTimeout)
	rc.CommitTimeout = scale(rc.CommitTimeout)
	if cfg.SnapshotThreshold > 0 {
		rc.SnapshotThreshold = cfg.SnapshotThreshold
	}
	if cfg.SnapshotInterval > 0 {
		rc.SnapshotInterval = cfg.SnapshotInterval
	}
	if cfg.TrailingLogs > 0 {
		rc.TrailingLogs = cfg.TrailingLogs
	}
	if err := raft.ValidateConfig(rc); err != nil {
		return nil, fmt.Errorf("raft timings from multiplier %v are invalid: %w", cfg.Multiplier, err)
	}

	bolt, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(cfg.DataDir, "raft.db")})
	if err != nil {
		return nil, fmt.Errorf("open %s (is another agent using this data_dir?): %w", filepath.Join(cfg.DataDir, "raft.db"), err)
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.DataDir, 3, hl.Named("snapshots"))
	if err != nil {
		bolt.Close()
		return nil, fmt.Errorf("open snapshot store in %s: %w", cfg.DataDir, err)
	}
	adv, err := net.ResolveTCPAddr("tcp", cfg.RaftAddr)
	if err != nil {
		bolt.Close()
		return nil, fmt.Errorf("resolve raft_addr %s: %w", cfg.RaftAddr, err)
	}
	// Pipelining off (MaxRPCsInFlight 1): on a LAN it buys nothing over batching, and its
	// send/decode goroutine pair can wedge a follower's replication and a shutdown
	// (hashicorp/raft#612).
	trans, err := raft.NewTCPTransportWithConfig(cfg.RaftAddr, adv, &raft.NetworkTransportConfig{
		MaxPool: 3, Timeout: 10 * time.Second, MaxRPCsInFlight: 1, Logger: hl.Named("transport"),
	})
	if err != nil {
		bolt.Close()
		return nil, fmt.Errorf("listen for raft on %s (is the port free?): %w", cfg.RaftAddr, err)
	}
	r, err := raft.NewRaft(rc, f, bolt, bolt, snaps, trans)
	if err != nil {
		trans.Close()
		bolt.Close()
		return nil, fmt.Errorf("start raft: %w", err)
	}
	s := &Store{cfg: cfg, raft: r, fsm: f, bolt: bolt, transport: trans, logger: logger, closed: make(chan struct{})}
	s.obsCh = make(chan raft.Observation, 64)
	s.observer = raft.NewObserver(s.obsCh, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	r.RegisterObserver(s.observer)
	go s.watchLeader()
	return s, nil
}

func (s *Store) watchLeader() {
	for {
		select {
		case <-s.closed:
			return
		case o := <-s.obsCh:
			lo := o.Data.(raft.LeaderObservation)
			s.mu.Lock()
			s.leaderChanges++
			s.mu.Unlock()
			s.logger.Info("raft leader changed", "leader", string(lo.LeaderID), "addr", string(lo.LeaderAddr))
		}
	}
}

// Raft exposes the underlying raft node for read-only inspection (stats, state).
func (s *Store) Raft() *raft.Raft { return s.raft }

// FSM returns the state machine.
func (s *Store) FSM() *fsm.FSM { return s.fsm }

// ID is this node's Raft server ID.
func (s *Store) ID() string { return s.cfg.ID }

// HasState reports whether this node has Raft state (it was bootstrapped or has been added to a
// cluster), in which case it must never bootstrap again.
func (s *Store) HasState() bool {
	if s.raft.LastIndex() > 0 {
		return true
	}
	f := s.raft.GetConfiguration()
	return f.Error() == nil && len(f.Configuration().Servers) > 0
}

// Bootstrap starts a new cluster with the given voters (id → raft address). Every witness that
// bootstraps must pass the same set; a node that already has state refuses.
func (s *Store) Bootstrap(voters map[string]string) error {
	if s.HasState() {
		return fmt.Errorf("bootstrap refused: %s already has raft state", s.cfg.ID)
	}
	var conf raft.Configuration
	for id, addr := range voters {
		conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(id), Address: raft.ServerAddress(addr)})
	}
	if err := s.raft.BootstrapCluster(conf).Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
		return fmt.Errorf("bootstrap raft with %d voters: %w", len(voters), err)
	}
	return nil
}

// IsLeader reports whether this node is the Raft leader.
func (s *Store) IsLeader() bool { return s.raft.State() == raft.Leader }

// Leader returns the leader's server ID and raft address, empty when unknown.
func (s *Store) Leader() (id, addr string) {
	a, i := s.raft.LeaderWithID()
	return string(i), string(a)
}

// LeaderChanges counts leader observations since start (for metrics).
func (s *Store) LeaderChanges() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.leaderChanges
}

// LeaderCh delivers true when this node becomes leader and false when it stops being leader.
func (s *Store) LeaderCh() <-chan bool { return s.raft.LeaderCh() }

// Term is the current Raft term.
func (s *Store) Term() uint64 { return s.raft.CurrentTerm() }

// Propose stamps the command with the proposer's clock and actor, commits it through Raft and
// returns the FSM's result. Only the leader can propose; others get ErrNotLeader or ErrNoLeader.
// A request the FSM rejects comes back as Result.Err with nothing changed.
func (s *Store) Propose(ctx context.Context, t regentv1.CommandType, payload proto.Message, actor string) (*fsm.Result, error) {
	data, err := fsm.Encode(t, payload, time.Now(), actor)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", t, err)
	}
	return s.ProposeRaw(ctx, data)
}

// ProposeRaw commits an already encoded command (see fsm.Encode).
func (s *Store) ProposeRaw(ctx context.Context, data []byte) (*fsm.Result, error) {
	if err := s.leaderErr(); err != nil {
		return nil, err
	}
	timeout := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	start := time.Now()
	f := s.raft.Apply(data, timeout)
	err := f.Error()
	if s.cfg.OnApply != nil {
		s.cfg.OnApply(time.Since(start))
	}
	if err != nil {
		return nil, s.mapRaftErr(err)
	}
	res, ok := f.Response().(*fsm.Result)
	if !ok {
		return nil, fmt.Errorf("fsm returned %T, not *fsm.Result", f.Response())
	}
	return res, nil
}

func (s *Store) leaderErr() error {
	select {
	case <-s.closed:
		return ErrClosed
	default:
	}
	if s.IsLeader() {
		return nil
	}
	if id, _ := s.Leader(); id == "" {
		return ErrNoLeader
	}
	return ErrNotLeader
}

func (s *Store) mapRaftErr(err error) error {
	switch {
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost), errors.Is(err, raft.ErrLeadershipTransferInProgress):
		if id, _ := s.Leader(); id == "" {
			return fmt.Errorf("%w: %v", ErrNoLeader, err)
		}
		return fmt.Errorf("%w: %v", ErrNotLeader, err)
	case errors.Is(err, raft.ErrRaftShutdown):
		return ErrClosed
	case errors.Is(err, raft.ErrEnqueueTimeout):
		return fmt.Errorf("%w: raft did not accept the entry in time: %v", ErrNoLeader, err)
	}
	return fmt.Errorf("raft: %w", err)
}

// VerifyLeader confirms with a quorum that this node still leads.
func (s *Store) VerifyLeader(ctx context.Context) error {
	if err := s.leaderErr(); err != nil {
		return err
	}
	f := s.raft.VerifyLeader()
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		if err != nil {
			return s.mapRaftErr(err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("verify leadership: %w", ctx.Err())
	}
}

// VerifyRead makes a linearizable read possible on the leader: it confirms leadership with a
// quorum, then waits until the FSM has applied everything committed before the call.
func (s *Store) VerifyRead(ctx context.Context) error {
	if err := s.leaderErr(); err != nil {
		return err
	}
	commit := s.raft.CommitIndex()
	if err := s.raft.VerifyLeader().Error(); err != nil {
		return s.mapRaftErr(err)
	}
	return s.WaitApplied(ctx, commit)
}

// WaitApplied waits until Raft has applied every entry up to idx (commands reach the FSM;
// configuration and barrier entries only move Raft's applied index, so that is what counts).
func (s *Store) WaitApplied(ctx context.Context, idx uint64) error {
	if s.raft.AppliedIndex() >= idx {
		return nil
	}
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for s.raft.AppliedIndex() < idx {
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for index %d to be applied (at %d): %w", idx, s.raft.AppliedIndex(), ctx.Err())
		case <-s.closed:
			return ErrClosed
		case <-tick.C:
		}
	}
	return nil
}

// AppliedIndex is the index of the last entry Raft applied (commands and configuration alike).
func (s *Store) AppliedIndex() uint64 { return s.raft.AppliedIndex() }

// Server is one entry of the Raft configuration.
type Server struct {
	ID      string
	Address string
	Voter   bool
}

// Servers returns the latest Raft configuration.
func (s *Store) Servers() ([]Server, error) {
	f := s.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, s.mapRaftErr(err)
	}
	var out []Server
	for _, sv := range f.Configuration().Servers {
		out = append(out, Server{ID: string(sv.ID), Address: string(sv.Address), Voter: sv.Suffrage == raft.Voter})
	}
	return out, nil
}

// AddVoter adds (or promotes) a voter; leader only.
func (s *Store) AddVoter(id, addr string) error {
	if err := s.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, 10*time.Second).Error(); err != nil {
		return fmt.Errorf("add voter %s at %s: %w", id, addr, s.mapRaftErr(err))
	}
	return nil
}

// AddNonvoter adds a non-voting member that receives the log; leader only.
func (s *Store) AddNonvoter(id, addr string) error {
	if err := s.raft.AddNonvoter(raft.ServerID(id), raft.ServerAddress(addr), 0, 10*time.Second).Error(); err != nil {
		return fmt.Errorf("add non-voter %s at %s: %w", id, addr, s.mapRaftErr(err))
	}
	return nil
}

// RemoveServer removes a server from the configuration; leader only.
func (s *Store) RemoveServer(id string) error {
	if err := s.raft.RemoveServer(raft.ServerID(id), 0, 10*time.Second).Error(); err != nil {
		return fmt.Errorf("remove raft server %s: %w", id, s.mapRaftErr(err))
	}
	return nil
}

// Barrier waits until every entry committed before it has been applied; leader only.
func (s *Store) Barrier(timeout time.Duration) error {
	if err := s.raft.Barrier(timeout).Error(); err != nil {
		return s.mapRaftErr(err)
	}
	return nil
}

// Snapshot asks raft to take a snapshot now.
func (s *Store) Snapshot() error {
	if err := s.raft.Snapshot().Error(); err != nil && !errors.Is(err, raft.ErrNothingNewToSnapshot) {
		return fmt.Errorf("snapshot: %w", err)
	}
	return nil
}

// shutdownGrace is how long Close lets Raft shut down before closing its transport under it.
const shutdownGrace = 3 * time.Second

// Close shuts Raft down and closes the log store. It does not leave the cluster.
func (s *Store) Close() error {
	var err error
	s.closeOnce.Do(func() {
		close(s.closed)
		s.raft.DeregisterObserver(s.observer)
		// Raft's shutdown waits for its replication goroutines, and one blocked on a peer
		// that does not answer waits for the transport's I/O timeout: after shutdownGrace,
		// close the transport under it so that Close returns.
		f := s.raft.Shutdown()
		done := make(chan error, 1)
		go func() { done <- f.Error() }()
		var e error
		select {
		case e = <-done:
		case <-time.After(shutdownGrace):
			s.logger.Warn("raft shutdown is taking long; closing its transport to unblock it", "waited", shutdownGrace)
			s.transport.Close()
			s.transport.CloseStreams()
			e = <-done
		}
		if e != nil {
			err = fmt.Errorf("shut down raft: %w", e)
		}
		if e := s.transport.Close(); e != nil && err == nil {
			err = fmt.Errorf("close raft transport: %w", e)
		}
		if e := s.bolt.Close(); e != nil && err == nil {
			err = fmt.Errorf("close raft.db: %w", e)
		}
	})
	return err
}
