// Package agent wires one witness together: node identity, the FSM and Raft store, memberlist
// gossip, self-bootstrap, the leader loop that reconciles gossip membership into Raft, the gRPC
// API and the HTTP endpoints. `regent agent` and `regent lab` both run it.
package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/regentdb/regent/alert"
	"github.com/regentdb/regent/api"
	"github.com/regentdb/regent/config"
	"github.com/regentdb/regent/coordinator"
	"github.com/regentdb/regent/fsm"
	"github.com/regentdb/regent/gossip"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
	"github.com/regentdb/regent/store"
)

// Agent is a running witness.
type Agent struct {
	cfg    config.Agent
	logger *slog.Logger
	id     string

	fsm     *fsm.FSM
	store   *store.Store
	gossip  *gossip.Gossip
	api     *api.Server
	grpc    *grpc.Server
	health  *health.Server
	httpSrv *http.Server
	metrics *metrics

	reconciles atomic.Uint64

	alerts    *alert.Notifier
	observer  *observer
	obsMu     sync.Mutex
	leaderObs *leaderObserve
	// leaderFailovers is the failover work of the current leader session (nil otherwise).
	leaderFailovers *failovers
	world           coordinator.World
	sagaOpts        coordinator.SagaOptions
	beating         map[string]bool // clusters whose heartbeat write is under way
	leases          *leaseStore

	cancel   context.CancelFunc
	wg       sync.WaitGroup
	stopOnce sync.Once
	stopErr  error
}

// Start opens the witness's state, starts listening on every configured address and begins
// gossip, bootstrap and (when elected) leadership. It returns once everything listens.
func Start(cfg config.Agent, logger *slog.Logger) (*Agent, error) {
	logger = logger.With("node", cfg.NodeName)
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data_dir %s: %w", cfg.DataDir, err)
	}
	id, err := loadOrCreateID(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, logger: logger, id: id, beating: map[string]bool{}}
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	ok := false
	defer func() {
		if !ok {
			a.Shutdown()
		}
	}()

	a.leases, err = openLeaseStore(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	a.metrics = newMetrics()
	a.fsm = fsm.New()
	a.store, err = store.Open(store.Config{
		ID:                id,
		RaftAddr:          cfg.RaftAddr,
		DataDir:           cfg.DataDir,
		Multiplier:        cfg.RaftMultiplier,
		SnapshotThreshold: cfg.SnapshotThreshold,
		SnapshotInterval:  cfg.SnapshotInterval.Duration,
		TrailingLogs:      cfg.TrailingLogs,
		Logger:            logger,
		OnApply:           a.metrics.observeApply,
	}, a.fsm)
	if err != nil {
		return nil, err
	}
	a.gossip, err = gossip.New(gossip.Config{
		Name:     cfg.NodeName,
		BindAddr: cfg.GossipAddr,
		Fast:     cfg.RaftMultiplier < 1,
		Logger:   logger,
		Meta: gossip.Meta{
			ID: id, Region: cfg.Region, RaftAddr: cfg.RaftAddr, GRPCAddr: cfg.GRPCAddr, HTTPAddr: cfg.HTTPAddr,
			HasState: a.store.HasState(),
		},
	})
	if err != nil {
		return nil, err
	}
	a.metrics.register(a)

	a.alerts = alert.New(alert.Options{
		WebhookURL: cfg.Alerts.WebhookURL, Timeout: cfg.Alerts.WebhookTimeout.Duration,
		Retries: cfg.Alerts.WebhookRetries, Logger: logger,
	})
	a.api = api.New(cfg.NodeName, a.store, a.gossip, logger)
	a.api.SetReportHandler(a.onReport)
	a.api.SetFailoverHandler(a.onFailover)
	a.api.SetSwitchoverHandler(a.onSwitchover)
	a.api.SetLeaseHandlers(a.renewLease, a.revokeLease)
	a.observer = newObserver(a)
	a.world = world{a}
	grpcLis, err := net.Listen("tcp", cfg.GRPCAddr)
	if err != nil {
		return nil, fmt.Errorf("listen for gRPC on %s (is the port free?): %w", cfg.GRPCAddr, err)
	}
	a.grpc = grpc.NewServer(
		grpc.ChainUnaryInterceptor(a.metrics.unaryInterceptor),
		grpc.ChainStreamInterceptor(a.metrics.streamInterceptor),
	)
	regentv1.RegisterRegentServer(a.grpc, a.api)
	a.health = health.NewServer()
	healthpb.RegisterHealthServer(a.grpc, a.health)
	reflection.Register(a.grpc)
	a.serve("grpc", func() error { return a.grpc.Serve(grpcLis) })

	httpLis, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return nil, fmt.Errorf("listen for HTTP on %s (is the port free?): %w", cfg.HTTPAddr, err)
	}
	a.httpSrv = &http.Server{Handler: a.httpHandler(), ReadHeaderTimeout: 5 * time.Second}
	a.serve("http", func() error {
		if err := a.httpSrv.Serve(httpLis); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})

	a.goLoop(func() { a.joinLoop(ctx) })
	a.goLoop(func() { a.bootstrapLoop(ctx) })
	a.goLoop(func() { a.leaderLoop(ctx) })
	a.goLoop(func() { a.healthLoop(ctx) })
	a.goLoop(func() { a.observer.run(ctx) })
	logger.Info("witness started", "id", id, "region", cfg.Region, "raft", cfg.RaftAddr, "gossip", cfg.GossipAddr,
		"grpc", cfg.GRPCAddr, "http", cfg.HTTPAddr, "has_state", a.store.HasState())
	ok = true
	return a, nil
}

func (a *Agent) serve(what string, fn func() error) {
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		if err := fn(); err != nil {
			a.logger.Error("server stopped", "server", what, "err", err)
		}
	}()
}

func (a *Agent) goLoop(fn func()) {
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		fn()
	}()
}

// Name is the witness's node name.
func (a *Agent) Name() string { return a.cfg.NodeName }

// ID is the witness's stable identity (its Raft server ID).
func (a *Agent) ID() string { return a.id }

// Config returns the configuration the agent runs with.
func (a *Agent) Config() config.Agent { return a.cfg }

// Store returns the Raft store.
func (a *Agent) Store() *store.Store { return a.store }

// FSM returns the replicated state machine.
func (a *Agent) FSM() *fsm.FSM { return a.fsm }

// Gossip returns the memberlist member.
func (a *Agent) Gossip() *gossip.Gossip { return a.gossip }

// Shutdown stops the agent: gossip leaves, the servers stop, Raft shuts down (the witness stays a
// member of the Raft configuration, as after a crash; `regent members remove` removes it).
func (a *Agent) Shutdown() error {
	a.stopOnce.Do(func() {
		if a.cancel != nil {
			a.cancel()
		}
		var errs []error
		if a.health != nil {
			a.health.Shutdown()
		}
		if a.grpc != nil {
			stopped := make(chan struct{})
			go func() { a.grpc.GracefulStop(); close(stopped) }()
			select {
			case <-stopped:
			case <-time.After(2 * time.Second):
				a.grpc.Stop() // a Watch stream does not end by itself
			}
		}
		if a.httpSrv != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			errs = append(errs, a.httpSrv.Shutdown(ctx))
			cancel()
		}
		if a.api != nil {
			a.api.Close()
		}
		if a.gossip != nil {
			// A leave that is not acknowledged in time is not a failure to stop: the others
			// will notice the witness is gone by failure detection instead.
			if err := a.gossip.Leave(time.Second); err != nil {
				a.logger.Warn("gossip leave not acknowledged in time; the others will detect the departure", "err", err)
			}
		}
		a.wg.Wait()
		if a.store != nil {
			errs = append(errs, a.store.Close())
		}
		if a.alerts != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			if err := a.alerts.Close(ctx); err != nil {
				errs = append(errs, fmt.Errorf("alerts: %w", err))
			}
			cancel()
		}
		a.stopErr = errors.Join(errs...)
		a.logger.Info("witness stopped")
	})
	return a.stopErr
}

// loadOrCreateID reads data_dir/node-id, creating it with a random identity on first start.
func loadOrCreateID(dir string) (string, error) {
	path := filepath.Join(dir, "node-id")
	b, err := os.ReadFile(path)
	if err == nil {
		id := strings.TrimSpace(string(b))
		if id == "" {
			return "", fmt.Errorf("%s is empty: restore it from a backup, or wipe data_dir to join as a new witness", path)
		}
		return id, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("read node identity: %w", err)
	}
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", fmt.Errorf("generate node identity: %w", err)
	}
	h := hex.EncodeToString(raw[:])
	id := h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
	if err := os.WriteFile(path, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write node identity: %w", err)
	}
	return id, nil
}
