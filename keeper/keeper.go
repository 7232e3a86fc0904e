// Package keeper is `regent keeper`, the agent beside each PostgreSQL server. It holds the
// primary's quorum lease (renewed from a majority of the witnesses, never from the leader
// alone) and fences its server before the lease can run out; it obeys the leader's
// instructions (fence, unfence, stop, promote, restart, rejoin) only with a fencing token at least the
// highest it has obeyed; it starts its server at boot as a writable primary only when the
// witnesses name it primary and grant its lease, and restarts a crashed primary in place; and
// it serves Patroni-compatible health endpoints for HAProxy. DESIGN.md explains why.
package keeper

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/regentdb/regent/fencing"
	"github.com/regentdb/regent/gossip"
	"github.com/regentdb/regent/pgconnect"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// Keeper is one running keeper. Start makes one; Shutdown stops it.
type Keeper struct {
	cfg     Config
	log     *slog.Logger
	state   *stateStore
	pg      *pgCtl
	obs     *observer
	wit     *witnesses
	metrics *metrics
	started time.Time

	// mu guards the fields below it.
	mu               sync.Mutex
	lease            leaseState
	policyTTL        time.Duration // the cluster policy's lease_ttl (from renewals), 0 until learned
	members          int           // witnesses the witnesses count (from renewals), 0 until learned
	lastInRecovery   time.Time     // last time the server was seen in recovery (or with standby.signal)
	running          bool          // the last pg_ctl status
	designationKnown bool
	designationCh    chan struct{} // closed once designationKnown
	fencedAt         time.Time
	startFailures    int
	nextStart        time.Time
	// restart is the in-place restart of a crashed designated primary (see restart.go).
	restart restartState

	// actMu serialises every action on PostgreSQL (fence, unfence, start, stop, promote).
	actMu sync.Mutex
	// rejoin: whether a REJOIN runs, and the last failed attempt (rejoin.go).
	rejoin rejoinProgress
	// wake asks the control loop to reconcile now (a lease change).
	wake chan struct{}

	// gossip is the keeper's memberlist member (nil without gossip_addr; gossip.go), and
	// gossipDone is closed when its join loop has ended.
	gossip     *gossip.Gossip
	gossipDone chan struct{}

	grpcLis, httpLis net.Listener
	grpcSrv          *grpc.Server
	httpSrv          *http.Server
	cancel           context.CancelFunc
	wg               sync.WaitGroup
	shutdownOnce     sync.Once
	shutdownErr      error
}

// Start validates cfg, opens the state directory, binds the Keeper API and the health
// endpoints, and starts the keeper's loops: lease renewal, and the control loop that first
// applies the startup rules (DESIGN.md) and then watches the server. It returns once the
// listeners are bound; the server's start, if needed, happens in the background.
func Start(cfg Config, logger *slog.Logger) (*Keeper, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	k := &Keeper{cfg: cfg, log: logger.With("cluster", cfg.Cluster, "node", cfg.NodeName), started: time.Now(),
		designationCh: make(chan struct{}), wake: make(chan struct{}, 1)}
	var err error
	if k.state, err = openState(cfg.StateDir); err != nil {
		return nil, err
	}
	if k.pg, err = newPGCtl(cfg); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	k.cancel = cancel
	fail := func(err error) (*Keeper, error) {
		cancel()
		k.closeListeners()
		if k.gossip != nil {
			_ = k.gossip.Shutdown()
		}
		if k.wit != nil {
			k.wit.Close()
		}
		return nil, err
	}
	sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
	running, err := k.pg.Status(sctx)
	scancel()
	if err != nil {
		return fail(err)
	}
	k.running = running
	k.obs = &observer{target: k.target}
	// Every cluster's first epoch is 1; a restarted keeper renews the last one it learned.
	k.lease.epoch = max(k.state.Get().LeaseEpoch, 1)
	if k.pg.logPath == "" {
		k.pg.logPath = filepath.Join(cfg.StateDir, "postgresql.log")
	}
	if k.wit, err = dialWitnesses(cfg.Witnesses, fencing.RenewEvery(cfg.LeaseTTL.Duration)); err != nil {
		return fail(err)
	}
	k.metrics = newMetrics(k)
	if k.grpcLis, err = net.Listen("tcp", cfg.ListenGRPC); err != nil {
		return fail(fmt.Errorf("listen_grpc %s: %w; choose a free address", cfg.ListenGRPC, err))
	}
	if k.httpLis, err = net.Listen("tcp", cfg.ListenHTTP); err != nil {
		return fail(fmt.Errorf("listen_http %s: %w; choose a free address", cfg.ListenHTTP, err))
	}
	if err := k.startGossip(); err != nil {
		return fail(err)
	}
	k.grpcSrv = grpc.NewServer()
	regentv1.RegisterKeeperServer(k.grpcSrv, &service{k: k})
	hs := health.NewServer()
	healthpb.RegisterHealthServer(k.grpcSrv, hs)
	k.httpSrv = &http.Server{Handler: k.httpHandler(), ReadHeaderTimeout: 5 * time.Second}
	k.goRun(func() {
		if err := k.grpcSrv.Serve(k.grpcLis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			k.log.Error("keeper gRPC server stopped", "err", err)
		}
	})
	k.goRun(func() {
		if err := k.httpSrv.Serve(k.httpLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			k.log.Error("keeper HTTP server stopped", "err", err)
		}
	})
	k.goRun(func() { k.renewLoop(ctx) })
	k.goRun(func() { k.controlLoop(ctx) })
	if k.gossip != nil {
		// Not under wg: a join towards a black-holed witness may hang for memberlist's TCP
		// timeout (10 s), and Kill must not wait for it (Shutdown waits a little; gossip.go).
		k.gossipDone = make(chan struct{})
		go func() {
			defer close(k.gossipDone)
			k.gossipLoop(ctx)
		}()
	}
	k.log.Info("keeper started", "grpc", k.GRPCAddr(), "http", k.HTTPAddr(), "gossip", cfg.GossipAddr, "witnesses", len(cfg.Witnesses),
		"lease_ttl", cfg.LeaseTTL.Duration, "postgres_running", running)
	return k, nil
}

func (k *Keeper) goRun(f func()) {
	k.wg.Add(1)
	go func() {
		defer k.wg.Done()
		f()
	}()
}

// GRPCAddr is the Keeper API's bound address.
func (k *Keeper) GRPCAddr() string { return k.grpcLis.Addr().String() }

// HTTPAddr is the health endpoints' bound address.
func (k *Keeper) HTTPAddr() string { return k.httpLis.Addr().String() }

func (k *Keeper) closeListeners() {
	for _, l := range []net.Listener{k.grpcLis, k.httpLis} {
		if l != nil {
			l.Close()
		}
	}
}

// Shutdown stops the keeper. A keeper that stops can no longer fence its server when the
// lease runs out, so if the server takes writes it is fenced first (read-only; the next
// keeper lifts that once it holds the lease). PostgreSQL itself keeps running. Last, it leaves
// the witnesses' gossip gracefully (they list it as left).
func (k *Keeper) Shutdown() error {
	k.shutdownOnce.Do(func() {
		k.cancel()
		stopped := make(chan struct{})
		go func() {
			k.grpcSrv.GracefulStop()
			close(stopped)
		}()
		select {
		case <-stopped:
		case <-time.After(5 * time.Second):
			k.grpcSrv.Stop()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = k.httpSrv.Shutdown(ctx)
		cancel()
		k.wg.Wait()

		k.actMu.Lock()
		ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
		o := k.observe(ctx, time.Second)
		if o.Writable() || (!o.OK && !o.Starting && k.isRunning() && !k.pg.StartedReadOnly() && !k.pg.StandbyConfigured()) {
			k.log.Info("keeper stopping: fencing the server, which no keeper will fence at the lease's end")
			if err := k.fence(ctx, FenceLease, 10*time.Second); err != nil {
				k.shutdownErr = err
			}
		}
		cancel()
		k.actMu.Unlock()
		k.obs.Close()
		k.wit.Close()
		k.leaveGossip()
		k.log.Info("keeper stopped")
	})
	return k.shutdownErr
}

// Kill stops the keeper as if its process had been killed (SIGKILL, or its host lost): its
// loops, listeners and gossip stop at once (no goodbye: the witnesses' gossip finds it dead)
// and nothing is fenced, so a writable server stays writable until the lease machinery
// elsewhere (the witnesses' revocation, the leader's wait) deals with it. It is for drills and tests of host loss (regent lab, bench/rto); Shutdown afterwards does
// nothing.
func (k *Keeper) Kill() {
	k.shutdownOnce.Do(func() {
		k.cancel()
		k.grpcSrv.Stop()
		_ = k.httpSrv.Close()
		k.wg.Wait()
		k.obs.Close()
		k.wit.Close()
		if k.gossip != nil {
			_ = k.gossip.Shutdown() // no goodbye: the witnesses find it dead, as after a lost host
		}
		k.log.Warn("keeper killed: nothing fenced")
	})
}

// target is the local server and the keeper's login to it.
func (k *Keeper) target() pgconnect.Target {
	p := k.cfg.Postgres
	pw, err := p.Password(k.cfg.Host, k.cfg.Port, p.Database, p.User)
	if err != nil {
		k.log.Warn("reading the password file", "err", err)
	}
	return pgconnect.Target{Host: k.cfg.Host, Port: k.cfg.Port, User: p.User, Database: p.Database, Password: pw,
		SSLMode: p.SSLMode, Node: k.cfg.NodeName, Cluster: k.cfg.Cluster}
}

// poke asks the control loop to reconcile soon.
func (k *Keeper) poke() {
	select {
	case k.wake <- struct{}{}:
	default:
	}
}

func (k *Keeper) isRunning() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.running
}

// checkRunning asks pg_ctl status and records the answer.
func (k *Keeper) checkRunning(ctx context.Context) bool {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	running, err := k.pg.Status(cctx)
	k.mu.Lock()
	defer k.mu.Unlock()
	if err != nil {
		k.log.Warn("pg_ctl status failed", "err", err)
		return k.running
	}
	k.running = running
	return running
}

// observe queries the server (within timeout) and records what it found. When standby.signal
// is present the server cannot be taking writes either (PostgreSQL removes it before it ends
// recovery), which a server too busy to answer still shows.
func (k *Keeper) observe(ctx context.Context, timeout time.Duration) observation {
	at := time.Now()
	standby := k.pg.StandbyConfigured()
	cctx, cancel := context.WithTimeout(ctx, timeout)
	o := k.obs.Observe(cctx)
	cancel()
	k.mu.Lock()
	defer k.mu.Unlock()
	if standby && at.After(k.lastInRecovery) {
		k.lastInRecovery = at
	}
	if o.OK && o.InRecovery && o.At.After(k.lastInRecovery) {
		k.lastInRecovery = o.At
	}
	if o.OK || o.Starting {
		k.running = true
	}
	return o
}

// controlLoop applies the startup rules, then reconciles on every lease change, at the
// obligation deadline (to fence in time) and every renewal interval (to watch the server).
func (k *Keeper) controlLoop(ctx context.Context) {
	select {
	case <-ctx.Done():
		return
	case <-k.designationCh:
	}
	k.startup(ctx)
	tick := time.NewTicker(fencing.RenewEvery(k.cfg.LeaseTTL.Duration))
	defer tick.Stop()
	deadline := time.NewTimer(time.Hour)
	defer deadline.Stop()
	for {
		k.mu.Lock()
		dl := k.obligationLocked()
		k.mu.Unlock()
		deadline.Stop()
		armed := false
		if d := time.Until(dl); d > 0 {
			deadline.Reset(d)
			armed = true
		}
		urgent := false
		select {
		case <-ctx.Done():
			return
		case <-k.wake:
		case <-tick.C:
		case <-deadline.C:
			urgent = armed
		}
		k.reconcile(ctx, urgent)
	}
}

// startup applies the startup rules once the witnesses have answered (or could not be
// reached for 2·ttl): a stopped server is started, as a writable primary only if the witnesses
// name this node primary and a majority granted its lease, otherwise read-only.
func (k *Keeper) startup(ctx context.Context) {
	k.actMu.Lock()
	defer k.actMu.Unlock()
	if !k.checkRunning(ctx) {
		if k.state.Get().Stopped {
			k.log.Info("PostgreSQL is stopped by a STOP instruction; not starting it (a RESTART instruction lifts that)")
			return
		}
		if wait, why := k.leftForRejoin(); wait {
			k.log.Warn("not starting PostgreSQL: it waits for the leader's REJOIN", "why", why)
			return
		}
		if k.viewNow(time.Now()).designated {
			// A reboot of the designated primary's host is a restart in place too: reported
			// like one (restart.go) while the server comes up.
			k.mu.Lock()
			k.restart.begin(time.Now())
			k.mu.Unlock()
		}
		k.startServer(ctx, "keeper startup")
	}
}

// view is a consistent snapshot of what reconcile decides on.
type view struct {
	designated, holds, clean bool
	seenEpoch, epoch         uint64
	obligation               time.Time
}

func (k *Keeper) viewNow(now time.Time) view {
	k.mu.Lock()
	defer k.mu.Unlock()
	return view{designated: k.lease.designated, holds: k.holdsLeaseLocked(now), clean: k.lease.clean,
		seenEpoch: k.lease.seenEpoch, epoch: k.lease.epoch, obligation: k.obligationLocked()}
}

// reconcile makes the server agree with the lease and the keeper's marks: fence a server that
// may take writes past its obligation (or under a FENCE instruction), lift the keeper's own
// fence once the lease is held cleanly, and restart a stopped designated primary. urgent
// (the obligation deadline) fences at once if the deadline has indeed passed.
func (k *Keeper) reconcile(ctx context.Context, urgent bool) {
	k.actMu.Lock()
	defer k.actMu.Unlock()
	if ctx.Err() != nil {
		return
	}
	if urgent {
		// The obligation deadline: no time for a look first. fence checks for recovery
		// itself and is idempotent; the margin is its budget.
		now := time.Now()
		if k.pg.StandbyConfigured() {
			// standby.signal: it cannot be taking writes (see observe).
			k.mu.Lock()
			k.lastInRecovery = now
			k.mu.Unlock()
			return
		}
		if v := k.viewNow(now); !now.Before(v.obligation) && k.isRunning() {
			reason := FenceLease
			if k.state.Get().Fence == FenceInstruction {
				reason = FenceInstruction
			}
			if err := k.fence(ctx, reason, sqlFenceBudget(k.cfg.FenceMargin.Duration)); err != nil && ctx.Err() == nil {
				k.log.Error("COULD NOT FENCE the server: it may take writes without a lease", "err", err)
			}
		}
		return
	}
	running := k.checkRunning(ctx)
	o := k.observe(ctx, time.Second)
	running = running || o.OK || o.Starting
	now := time.Now()
	v := k.viewNow(now)
	st := k.state.Get()
	k.metrics.setRunning(running)

	if !running {
		k.mu.Lock()
		wait := now.Before(k.nextStart)
		if !st.Stopped && v.designated {
			k.restart.begin(now)
		}
		k.mu.Unlock()
		if !st.Stopped && v.designated && !wait {
			k.startServer(ctx, "the designated primary's postmaster is not running")
		}
		return
	}
	if o.OK {
		k.mu.Lock()
		k.restart.answeredAt(now)
		k.mu.Unlock()
	}
	lapsed := !now.Before(v.obligation)
	// A FENCE instruction holds until UNFENCE or PROMOTE, or until the witnesses name this
	// node primary at an epoch newer than the one it was fenced in.
	instructed := st.Fence == FenceInstruction && !(v.designated && v.seenEpoch > st.FenceEpoch)
	if instructed || lapsed {
		switch {
		case o.OK && o.InRecovery, o.Starting:
			// A standby, or a server that refuses connections while it starts or stops:
			// it takes no writes now.
		case o.OK && o.ReadOnly, !o.OK && k.pg.StartedReadOnly():
			// Read-only for new sessions (or started with the read-only option, when the
			// keeper cannot log in to look): fencing again would only restart it.
			if st.Fence == FenceNone {
				// Fenced by someone else (the leader's SQL fence, a read-only start): the
				// keeper keeps it so until it holds the lease again.
				k.setFence(FenceLease, v.epoch)
			}
		default:
			reason := FenceLease
			if instructed {
				reason = FenceInstruction
			}
			if err := k.fence(ctx, reason, sqlFenceBudget(k.cfg.FenceMargin.Duration)); err != nil && ctx.Err() == nil {
				k.log.Error("COULD NOT FENCE the server: it may take writes without a lease", "err", err)
			}
		}
		return
	}
	if !o.OK || o.InRecovery || !v.designated || !v.holds || !v.clean {
		return
	}
	if st.Fence != FenceNone {
		if err := k.unfence(ctx); err != nil {
			k.log.Warn("could not lift the keeper's fence; retrying at the next check", "err", err)
		}
	}
}

// sqlFenceBudget is how much of the fence margin the SQL fence may use before the keeper
// stops the server instead: all but stopReserve (pg_ctl stop -m immediate signals the
// postmaster within a few milliseconds of starting), and at least half.
func sqlFenceBudget(margin time.Duration) time.Duration {
	return max(margin-stopReserve, margin/2)
}

// stopReserve is the part of the fence margin kept for the immediate stop.
const stopReserve = 50 * time.Millisecond

// setFence records the keeper's fence mark.
func (k *Keeper) setFence(reason FenceReason, epoch uint64) {
	if err := k.state.Update(func(s *State) {
		if reason == FenceInstruction || s.Fence == FenceNone {
			s.Fence, s.FenceEpoch = reason, epoch
		}
	}); err != nil {
		k.log.Error("could not record the fence mark", "err", err)
	}
}

// fence makes the local server refuse writes: the SQL fence (read-only, reload, terminate
// client sessions, confirmed) within sqlBudget, and if that fails, pg_ctl stop -m immediate.
// A server in recovery is left alone. The keeper's fence mark is recorded afterwards (the
// fence itself comes first: it is the part with a deadline).
func (k *Keeper) fence(ctx context.Context, reason FenceReason, sqlBudget time.Duration) error {
	start := time.Now()
	fctx, cancel := context.WithTimeout(ctx, sqlBudget)
	t := k.target()
	rec, err := inRecovery(fctx, t)
	if err == nil && rec {
		cancel()
		return nil
	}
	how := "sql"
	if err == nil {
		err = fencing.FenceSQL(fctx, t)
	}
	cancel()
	if err != nil && ctx.Err() != nil {
		// The keeper is stopping (Shutdown fences once more, on a context of its own) or
		// the instruction's caller gave up.
		return fmt.Errorf("fence: interrupted: %w", ctx.Err())
	}
	if err != nil {
		k.log.Warn("SQL fence failed; stopping PostgreSQL immediately", "err", err)
		how = "stop"
		if serr := k.pg.Stop(ctx, "immediate", 30*time.Second); serr != nil {
			k.metrics.fences.WithLabelValues("failed").Inc()
			return fmt.Errorf("fence: the SQL fence failed (%w) and so did pg_ctl stop -m immediate: %w; stop PostgreSQL by hand", err, serr)
		}
		k.checkRunning(ctx)
	}
	now := time.Now()
	k.mu.Lock()
	k.fencedAt = now
	epoch := k.lease.epoch
	k.mu.Unlock()
	k.metrics.fences.WithLabelValues(how).Inc()
	k.setFence(reason, epoch)
	k.log.Warn("fenced PostgreSQL", "how", how, "reason", string(reason), "took", now.Sub(start))
	return nil
}

// unfence lifts the keeper's fence: a server started with the read-only option is restarted
// without it (still read-only through ALTER SYSTEM until the last step), then
// fencing.UnfenceSQL, provided the lease is still held at that moment.
func (k *Keeper) unfence(ctx context.Context) error {
	start := time.Now()
	uctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	t := k.target()
	if k.pg.StartedReadOnly() {
		if err := fencing.FenceSQL(uctx, t); err != nil {
			return fmt.Errorf("unfence: persisting the fence before a restart without the read-only option: %w", err)
		}
		if err := k.pg.Stop(uctx, "fast", 60*time.Second); err != nil {
			return fmt.Errorf("unfence: %w", err)
		}
		if err := k.pg.Start(uctx, false); err != nil {
			return fmt.Errorf("unfence: %w", err)
		}
		k.checkRunning(uctx)
	}
	if !k.viewNow(time.Now()).holds {
		return errors.New("unfence: the lease lapsed meanwhile; staying fenced")
	}
	if err := fencing.UnfenceSQL(uctx, t); err != nil {
		return fmt.Errorf("unfence: %w", err)
	}
	if err := k.state.Update(func(s *State) { s.Fence, s.FenceEpoch = FenceNone, 0 }); err != nil {
		return fmt.Errorf("unfence: %w", err)
	}
	k.log.Info("lifted the keeper's fence: this node holds the lease", "took", time.Since(start))
	return nil
}

// startServer starts the stopped server: as it is configured when it is a standby or this
// node is the designated primary holding the lease (and not fenced by instruction), else with
// the read-only option, and then the keeper's fence mark says so. Failures back off.
func (k *Keeper) startServer(ctx context.Context, why string) {
	st := k.state.Get()
	now := time.Now()
	v := k.viewNow(now)
	standby := k.pg.StandbyConfigured()
	readOnly := !standby && !(v.designated && v.holds && st.Fence != FenceInstruction)
	if readOnly {
		k.setFence(FenceLease, v.epoch)
	} else if !standby {
		// The server takes writes once its recovery ends, which may be after the lease held
		// now has run out (a long crash recovery, the witnesses revoking meanwhile): it starts
		// read-only by its own configuration, and the control loop lifts that under the lease
		// once it answers (no second restart, unlike the command-line option).
		if err := persistReadOnly(k.cfg.DataDir); err != nil {
			k.log.Warn("could not make the server start read-only through postgresql.auto.conf; starting it with the read-only option", "err", err)
			readOnly = true
		}
		k.setFence(FenceLease, v.epoch)
	}
	k.log.Info("starting PostgreSQL", "why", why, "read_only", readOnly, "standby", standby, "designated", v.designated, "holds_lease", v.holds)
	err := k.pg.Start(ctx, readOnly)
	k.checkRunning(ctx)
	k.mu.Lock()
	defer k.mu.Unlock()
	if err != nil {
		k.startFailures++
		backoff := min(time.Duration(1<<min(k.startFailures, 5))*time.Second, 30*time.Second)
		if k.restart.active() && k.startFailures == 1 {
			// A crashed primary's first restart may fail only because its orphaned
			// backends have not yet exited: try again soon, once.
			backoff = restartRetry
		}
		k.restart.failed(k.startFailures)
		k.nextStart = time.Now().Add(backoff)
		k.log.Error("could not start PostgreSQL", "err", err, "retry_in", backoff)
		return
	}
	k.startFailures = 0
}
