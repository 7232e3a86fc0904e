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
	"github.com/regentdb/regent/probe"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// metrics is one agent's Prometheus registry (not the global one: the lab and tests run several
// agents in one process).
type metrics struct {
	reg      *prometheus.Registry
	apply    prometheus.Histogram
	probes   *prometheus.HistogramVec
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
	m.probes = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "regent_probe_duration_seconds",
		Help:    "Duration of this witness's PostgreSQL probes, connecting included, by result (ok or the error class).",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 12),
	}, []string{"result"})
	m.reg.MustRegister(m.apply, m.requests, m.probes, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) observeApply(d time.Duration) { m.apply.Observe(d.Seconds()) }

func (m *metrics) observeProbe(r probe.Result) {
	result := "ok"
	if !r.Reachable {
		result = string(r.ErrorClass)
	}
	m.probes.WithLabelValues(result).Observe(r.Latency.Seconds())
}

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
	keepersDesc   = prometheus.NewDesc("regent_keepers", "Keepers known to this witness's gossip, by state.", []string{"state"}, nil)
	channelLabels = []string{"cluster", "primary_region", "secondary_region"}
	lagSecDesc    = prometheus.NewDesc("regent_channel_lag_seconds", "Replication lag of a channel in seconds (heartbeat-based).", channelLabels, nil)
	lagBytesDesc  = prometheus.NewDesc("regent_channel_lag_bytes", "Replication lag of a channel in WAL bytes (primary LSN - apply LSN).", channelLabels, nil)
	chStatusDesc  = prometheus.NewDesc("regent_channel_status", "1 for a channel's current status.", append(channelLabels, "status"), nil)
	reachDesc     = prometheus.NewDesc("regent_node_reachable", "1 when the witness's committed vote says the node is reachable.", []string{"cluster", "node", "witness"}, nil)
	alertsDesc    = prometheus.NewDesc("regent_alerts_total", "Alerts handed to the webhook, by outcome.", []string{"outcome"}, nil)
)

// stateCollector reports labelled gauges whose label sets come from live state.
type stateCollector struct{ a *Agent }

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{raftStateDesc, membersDesc, keepersDesc, lagSecDesc, lagBytesDesc, chStatusDesc, reachDesc, alertsDesc} {
		ch <- d
	}
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
	keepers := map[string]float64{"alive": 0, "dead": 0, "left": 0}
	for _, p := range c.a.gossip.Keepers() {
		keepers[p.State]++
	}
	for s, n := range keepers {
		ch <- prometheus.MustNewConstMetric(keepersDesc, prometheus.GaugeValue, n, s)
	}
	st, _ := c.a.fsm.State()
	for _, chn := range st.GetChannels() {
		lv := []string{chn.GetCluster(), chn.GetPrimaryRegion(), chn.GetSecondaryRegion()}
		ch <- prometheus.MustNewConstMetric(lagSecDesc, prometheus.GaugeValue, float64(chn.GetLagSeconds()), lv...)
		ch <- prometheus.MustNewConstMetric(lagBytesDesc, prometheus.GaugeValue, float64(chn.GetLagBytes()), lv...)
		for _, s := range []regentv1.ChannelStatus{regentv1.ChannelStatus_CHANNEL_STATUS_ACTIVE, regentv1.ChannelStatus_CHANNEL_STATUS_LAGGING,
			regentv1.ChannelStatus_CHANNEL_STATUS_FAILED, regentv1.ChannelStatus_CHANNEL_STATUS_REBUILDING} {
			v := 0.0
			if chn.GetStatus() == s {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(chStatusDesc, prometheus.GaugeValue, v, append(lv, channelStatus(s))...)
		}
	}
	for _, cl := range st.GetClusters() {
		for _, ns := range cl.GetNodeStatus() {
			for _, v := range ns.GetVotes() {
				r := 0.0
				if v.GetReachable() {
					r = 1
				}
				ch <- prometheus.MustNewConstMetric(reachDesc, prometheus.GaugeValue, r, cl.GetName(), ns.GetName(), v.GetWitness())
			}
		}
	}
	sent, failed, dropped := c.a.alerts.Stats()
	ch <- prometheus.MustNewConstMetric(alertsDesc, prometheus.CounterValue, float64(sent), "sent")
	ch <- prometheus.MustNewConstMetric(alertsDesc, prometheus.CounterValue, float64(failed), "failed")
	ch <- prometheus.MustNewConstMetric(alertsDesc, prometheus.CounterValue, float64(dropped), "dropped")
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
