package agent

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/regentdb/regent/probe"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
	"github.com/regentdb/regent/spec"
)

// observer runs this witness's probes of every PostgreSQL node of every cluster and reports
// what it sees to the leader in batches, one batch per probe interval.
type observer struct {
	a      *Agent
	prober *probe.Prober

	mu      sync.Mutex
	loops   map[time.Duration]*loopRun
	pending map[string]*regentv1.Observation // cluster/node → newest unreported observation
	flush   time.Duration                    // shortest probe interval: how often to report
}

type loopRun struct {
	loop   *probe.Loop
	cancel context.CancelFunc
	done   chan struct{}
}

func newObserver(a *Agent) *observer {
	return &observer{
		a:       a,
		prober:  probe.NewProber(probe.Options{Timeout: spec.DefaultProbeTimeout, Logger: a.logger}),
		loops:   map[time.Duration]*loopRun{},
		pending: map[string]*regentv1.Observation{},
		flush:   spec.DefaultProbeInterval,
	}
}

// run keeps the probe loops in step with the replicated cluster specs and reports results
// until ctx ends.
func (o *observer) run(ctx context.Context) {
	defer o.stopLoops()
	defer o.prober.Close()
	reports := make(chan struct{})
	go func() {
		defer close(reports)
		o.reportLoop(ctx)
	}()
	var idx uint64
	for {
		_, _, wait := o.a.fsm.ChangesSince(idx)
		st, at := o.a.fsm.State()
		idx = at
		o.setTargets(ctx, st)
		select {
		case <-ctx.Done():
			<-reports
			return
		case <-wait:
		}
		// Specs change rarely but the state changes every interval (channel figures): look
		// again at most twice a second.
		select {
		case <-ctx.Done():
			<-reports
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// targets computes the probe targets of every cluster, grouped by probe interval.
func (o *observer) targets(st *regentv1.State) (map[time.Duration][]probe.Target, time.Duration) {
	pg := o.a.cfg.Postgres
	out := map[time.Duration][]probe.Target{}
	flush := time.Duration(0)
	for _, c := range st.GetClusters() {
		pol := spec.WithDefaults(c.GetPolicy())
		iv := time.Duration(pol.GetProbeIntervalMs()) * time.Millisecond
		if flush == 0 || iv < flush {
			flush = iv
		}
		var sysid uint64
		for _, ns := range c.GetNodeStatus() {
			if ns.GetName() == c.GetPrimary() && !ns.GetWrongSystem() {
				sysid = ns.GetSystemIdentifier()
			}
		}
		for _, n := range c.GetNodes() {
			pw, err := pg.Password(n.GetHost(), uint16(n.GetPort()), pg.Database, pg.User)
			if err != nil {
				o.a.logger.Warn("read password file", "cluster", c.GetName(), "node", n.GetName(), "err", err)
			}
			out[iv] = append(out[iv], probe.Target{
				Cluster: c.GetName(), Node: n.GetName(), Host: n.GetHost(), Port: uint16(n.GetPort()),
				User: pg.User, Database: pg.Database, Password: pw, SSLMode: pg.SSLMode, ExpectedSystemID: sysid,
			})
		}
	}
	if flush == 0 {
		flush = spec.DefaultProbeInterval
	}
	return out, flush
}

func (o *observer) setTargets(ctx context.Context, st *regentv1.State) {
	byInterval, flush := o.targets(st)
	var stopped []*loopRun
	o.mu.Lock()
	o.flush = flush
	for iv, run := range o.loops {
		if _, ok := byInterval[iv]; !ok {
			stopped = append(stopped, run)
			delete(o.loops, iv)
		}
	}
	for iv, ts := range byInterval {
		run, ok := o.loops[iv]
		if !ok {
			lctx, cancel := context.WithCancel(ctx)
			run = &loopRun{loop: probe.NewLoop(o.prober, iv, o.deliver), cancel: cancel, done: make(chan struct{})}
			o.loops[iv] = run
			go func() {
				defer close(run.done)
				_ = run.loop.Run(lctx)
			}()
		}
		if err := run.loop.SetTargets(ts); err != nil {
			o.a.logger.Error("set probe targets", "err", err)
		}
	}
	o.mu.Unlock()
	// Wait for stopped loops outside the lock: their last probes deliver under it.
	for _, run := range stopped {
		run.cancel()
		<-run.done
	}
}

// stopLoops stops every probe loop and waits for them (outside the lock their deliveries take).
func (o *observer) stopLoops() {
	o.mu.Lock()
	runs := make([]*loopRun, 0, len(o.loops))
	for iv, run := range o.loops {
		runs = append(runs, run)
		delete(o.loops, iv)
	}
	o.mu.Unlock()
	for _, run := range runs {
		run.cancel()
		<-run.done
	}
}

// deliver keeps the newest result per node until the next report.
func (o *observer) deliver(r probe.Result) {
	o.a.metrics.observeProbe(r)
	obs := toObservation(r)
	o.mu.Lock()
	o.pending[r.Target.Key()] = obs
	o.mu.Unlock()
}

func toObservation(r probe.Result) *regentv1.Observation {
	obs := &regentv1.Observation{
		Cluster: r.Target.Cluster, Node: r.Target.Node, At: timestamppb.New(r.At),
		Reachable: r.Reachable, ErrorClass: string(r.ErrorClass),
		InRecovery: r.InRecovery, CurrentLsn: r.CurrentLSN, ReceivedLsn: r.ReceivedLSN, ReplayLsn: r.ReplayLSN,
		Timeline: r.Timeline, SystemIdentifier: r.SystemIdentifier, WalReceiverStatus: r.WalReceiverStatus,
		ReplayPaused: r.ReplayPaused, LatencySeconds: r.Latency.Seconds(),
	}
	if r.Err != nil {
		obs.Error = r.Err.Error()
	}
	if r.SenderHost != "" {
		obs.Upstream = fmt.Sprintf("%s:%d", r.SenderHost, r.SenderPort)
	}
	if !r.HeartbeatAt.IsZero() {
		obs.HeartbeatAt = timestamppb.New(r.HeartbeatAt)
	}
	return obs
}

// reportLoop sends the pending observations to the leader once per (shortest) probe interval.
func (o *observer) reportLoop(ctx context.Context) {
	for {
		o.mu.Lock()
		every := o.flush
		o.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
		o.mu.Lock()
		batch := make([]*regentv1.Observation, 0, len(o.pending))
		for _, obs := range o.pending {
			batch = append(batch, obs)
		}
		clear(o.pending)
		o.mu.Unlock()
		if len(batch) == 0 {
			continue
		}
		slices.SortFunc(batch, func(x, y *regentv1.Observation) int {
			if x.Cluster != y.Cluster {
				return cmpStr(x.Cluster, y.Cluster)
			}
			return cmpStr(x.Node, y.Node)
		})
		rctx, cancel := context.WithTimeout(ctx, every)
		_, err := o.a.api.Report(rctx, &regentv1.ReportRequest{Witness: o.a.cfg.NodeName, Observations: batch})
		cancel()
		if err != nil {
			o.a.logger.Debug("report observations to the leader", "n", len(batch), "err", err)
		}
	}
}

func cmpStr(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
