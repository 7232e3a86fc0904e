package keeper

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics is one keeper's Prometheus registry (not the global one: tests run several keepers
// in one process).
type metrics struct {
	reg     *prometheus.Registry
	rounds  *prometheus.CounterVec
	fences  *prometheus.CounterVec
	running prometheus.Gauge
}

func newMetrics(k *Keeper) *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.rounds = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "regent_keeper_renew_rounds_total",
		Help: "Lease renewal rounds by outcome: granted (a majority granted), denied (a majority answered, fewer granted), no_quorum (fewer than a majority answered).",
	}, []string{"outcome"})
	for _, o := range []string{outcomeGranted, outcomeDenied, outcomeNoQuorum} {
		m.rounds.WithLabelValues(o)
	}
	m.fences = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "regent_keeper_fences_total",
		Help: "Local fences by how they held: sql (read-only + terminate), stop (pg_ctl stop -m immediate), failed.",
	}, []string{"how"})
	m.running = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "regent_keeper_postgres_running",
		Help: "1 when the local postmaster runs.",
	})
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	m.reg.MustRegister(m.rounds, m.fences, m.running,
		gauge("regent_keeper_lease_held", "1 while a majority-granted renewal covers now.", func() float64 {
			k.mu.Lock()
			defer k.mu.Unlock()
			return b(k.holdsLeaseLocked(time.Now()))
		}),
		gauge("regent_keeper_lease_deadline_seconds", "Seconds until the keeper must have fenced (the lease deadline); 0 when no lease is held.", func() float64 {
			k.mu.Lock()
			defer k.mu.Unlock()
			return max(0, time.Until(k.deadlineLocked()).Seconds())
		}),
		gauge("regent_keeper_lease_epoch", "The lease epoch the keeper renews.", func() float64 {
			k.mu.Lock()
			defer k.mu.Unlock()
			return float64(k.lease.epoch)
		}),
		gauge("regent_keeper_designated_primary", "1 when the witnesses name this node primary.", func() float64 {
			k.mu.Lock()
			defer k.mu.Unlock()
			return b(k.lease.designated)
		}),
		gauge("regent_keeper_fenced", "1 while the keeper holds its server fenced (or stopped by instruction).", func() float64 {
			st := k.state.Get()
			return b(st.Fence != FenceNone || st.Stopped)
		}),
		gauge("regent_keeper_highest_token_term", "Term of the highest fencing token obeyed.", func() float64 {
			return float64(k.state.Get().Highest.Term)
		}),
		gauge("regent_keeper_highest_token_event", "Event of the highest fencing token obeyed.", func() float64 {
			return float64(k.state.Get().Highest.Event)
		}),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

func (m *metrics) setRunning(v bool) {
	if v {
		m.running.Set(1)
	} else {
		m.running.Set(0)
	}
}
