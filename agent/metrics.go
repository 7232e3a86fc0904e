package agent

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/regentdb/regent/api"
)

// metrics is one agent's Prometheus registry (not the global one: the lab and tests run several
// agents in one process).
type metrics struct {
	reg      *prometheus.Registry
	apply    prometheus.Histogram
	requests *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.apply = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "regent_raft_apply_duration_seconds",
		Help:    "Time from proposing a command to its FSM result on the leader.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
	})
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "regent_grpc_requests_total",
		Help: "gRPC requests served, by method and status code.",
	}, []string{"method", "code"})
	m.reg.MustRegister(m.apply, m.requests, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) observeApply(d time.Duration) { m.apply.Observe(d.Seconds()) }

// register adds the gauges read from the agent at scrape time.
func (m *metrics) register(a *Agent) {
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	m.reg.MustRegister(
		gauge("regent_raft_term", "Current Raft term.", func() float64 { return float64(a.store.Term()) }),
		gauge("regent_raft_commit_index", "Raft commit index known to this node.", func() float64 { return float64(a.store.Raft().CommitIndex()) }),
		gauge("regent_raft_applied_index", "Index of the last entry applied to the FSM.", func() float64 { return float64(a.fsm.AppliedIndex()) }),
		gauge("regent_raft_last_index", "Index of the last entry in the local Raft log.", func() float64 { return float64(a.store.Raft().LastIndex()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "regent_raft_leader_changes_total", Help: "Leader changes observed by this node."},
			func() float64 { return float64(a.store.LeaderChanges()) }),
		&stateCollector{a: a},
	)
}

var (
	raftStateDesc = prometheus.NewDesc("regent_raft_state", "1 for this node's current Raft state.", []string{"state"}, nil)
	membersDesc   = prometheus.NewDesc("regent_members", "Witnesses known to gossip, by state.", []string{"state"}, nil)
)

// stateCollector reports labelled gauges whose label sets come from live state.
type stateCollector struct{ a *Agent }

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- raftStateDesc
	ch <- membersDesc
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	cur := c.a.store.Raft().State().String()
	for _, s := range []string{"Follower", "Candidate", "Leader", "Shutdown"} {
		v := 0.0
		if s == cur {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(raftStateDesc, prometheus.GaugeValue, v, s)
	}
	counts := map[string]float64{"alive": 0, "suspect": 0, "dead": 0, "left": 0}
	for _, p := range c.a.gossip.Peers() {
		counts[p.State]++
	}
	for s, n := range counts {
		ch <- prometheus.MustNewConstMetric(membersDesc, prometheus.GaugeValue, n, s)
	}
}

func (m *metrics) unaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	resp, err := h(ctx, req)
	m.requests.WithLabelValues(api.MethodName(info.FullMethod), status.Code(err).String()).Inc()
	return resp, err
}

func (m *metrics) streamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	err := h(srv, ss)
	m.requests.WithLabelValues(api.MethodName(info.FullMethod), status.Code(err).String()).Inc()
	return err
}

// httpHandler serves /metrics, /healthz (the process answers) and /readyz (it knows a leader
// and has caught up).
func (a *Agent) httpHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"status": "ok", "node": a.cfg.NodeName})
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		ok, why := a.Ready()
		code := http.StatusOK
		if !ok {
			code = http.StatusServiceUnavailable
		}
		leader, _ := a.store.Leader()
		writeJSON(w, code, map[string]any{"ready": ok, "reason": why, "node": a.cfg.NodeName, "leader_id": leader,
			"applied_index": a.store.AppliedIndex(), "commit_index": a.store.Raft().CommitIndex()})
	})
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
