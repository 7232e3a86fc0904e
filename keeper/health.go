package keeper

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/regentdb/regent/spec"
)

// Health endpoints, answered the way Patroni's REST API answers them so that existing HAProxy
// configurations (option httpchk OPTIONS /primary, GET /replica?lag=16MB, …) work unchanged:
// 200 when the node is what the path asks, 503 when it is not, with a small JSON body either
// way. GET, HEAD and OPTIONS are accepted.
//
//	/primary (also /master, /leader, /read-write): this node is the designated primary, holds
//	    the lease and is writable (not in recovery, not read-only)
//	/replica (also /standby): in recovery and streaming; ?lag= bounds the lag (lagBound)
//	/read-only: it serves reads (a primary, fenced or not, or a replica)
//	/health: PostgreSQL runs and answers
//	/metrics: Prometheus

// lagBound is a /replica?lag= limit: bytes between received and replayed WAL, or how old
// the last replayed transaction is.
type lagBound struct {
	Bytes    int64
	Duration time.Duration
	IsTime   bool
}

// parseLag parses ?lag=: a size ("16MB", "1048576": spec.ParseSize, 1024-based like
// PostgreSQL) or a Go duration ("5s", "1m30s").
func parseLag(s string) (lagBound, error) {
	if n, err := spec.ParseSize(s); err == nil {
		return lagBound{Bytes: n}, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return lagBound{}, fmt.Errorf("lag=%q is neither a size (16MB, 1048576) nor a duration (5s, 1m)", s)
	}
	return lagBound{Duration: d, IsTime: true}, nil
}

// check reports whether a standby in status s is within the bound, and how far it is.
// Bytes compares the received-but-not-replayed WAL; a duration compares now with the last
// replayed transaction's commit time (kept fresh by the leader's heartbeat writes; unknown,
// and so failing, before the standby has replayed any transaction).
func (b lagBound) check(s Status, now time.Time) (bool, string) {
	if b.IsTime {
		if s.ReplayTimestamp.IsZero() {
			return false, "no transaction replayed yet: replay lag unknown"
		}
		lag := now.Sub(s.ReplayTimestamp)
		if lag > b.Duration {
			return false, fmt.Sprintf("last replayed transaction is %v old, more than %v", lag.Round(time.Millisecond), b.Duration)
		}
		return true, ""
	}
	gap := int64(0)
	if s.ReceiveLSN > s.ReplayLSN {
		gap = int64(s.ReceiveLSN - s.ReplayLSN)
	}
	if gap > b.Bytes {
		return false, fmt.Sprintf("%d bytes received but not replayed, more than %d", gap, b.Bytes)
	}
	return true, ""
}

// healthBody is the JSON the health endpoints answer with.
type healthBody struct {
	Role       string   `json:"role"`
	State      string   `json:"state"`
	Designated bool     `json:"designated"`
	Primary    string   `json:"primary,omitempty"`
	HoldsLease bool     `json:"holds_lease"`
	LeaseEpoch uint64   `json:"lease_epoch"`
	Fenced     bool     `json:"fenced"`
	InRecovery bool     `json:"in_recovery"`
	Streaming  bool     `json:"streaming,omitempty"`
	LagBytes   *int64   `json:"lag_bytes,omitempty"`
	LagSeconds *float64 `json:"replay_lag_seconds,omitempty"`
	Reason     string   `json:"reason,omitempty"`
}

func (k *Keeper) httpHandler() http.Handler {
	mux := http.NewServeMux()
	for _, p := range []string{"/primary", "/master", "/leader", "/read-write"} {
		mux.HandleFunc(p, k.health(checkPrimary))
	}
	for _, p := range []string{"/replica", "/standby"} {
		mux.HandleFunc(p, k.health(checkReplica))
	}
	mux.HandleFunc("/read-only", k.health(checkReadOnly))
	mux.HandleFunc("/health", k.health(checkHealth))
	mux.Handle("/metrics", promhttp.HandlerFor(k.metrics.reg, promhttp.HandlerOpts{}))
	return mux
}

// checkFunc decides one endpoint: ok, and why not.
type checkFunc func(s Status, lag *lagBound, now time.Time) (bool, string)

func checkPrimary(s Status, _ *lagBound, _ time.Time) (bool, string) {
	switch {
	case !s.Designated:
		if s.Primary != "" {
			return false, "the witnesses name " + s.Primary + " primary"
		}
		return false, "the witnesses have not named this node primary"
	case !s.HoldsLease:
		return false, "no lease: a majority of witnesses has not granted a renewal in time"
	case s.Role() != "primary":
		return false, "not writable: " + s.Role()
	}
	return true, ""
}

func checkReplica(s Status, lag *lagBound, now time.Time) (bool, string) {
	switch {
	case s.Role() != "replica":
		return false, "not a replica: " + s.Role()
	case !s.Streaming:
		return false, "the WAL receiver is not streaming"
	case lag != nil:
		return lag.check(s, now)
	}
	return true, ""
}

func checkReadOnly(s Status, _ *lagBound, _ time.Time) (bool, string) {
	if !s.Answering {
		return false, "PostgreSQL does not answer: " + s.Role()
	}
	return true, ""
}

func checkHealth(s Status, _ *lagBound, _ time.Time) (bool, string) {
	if !s.Answering {
		return false, "PostgreSQL does not answer: " + s.Role()
	}
	return true, ""
}

func (k *Keeper) health(check checkFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodGet, http.MethodHead, http.MethodOptions:
		default:
			w.Header().Set("Allow", "GET, HEAD, OPTIONS")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		var lag *lagBound
		if v := r.URL.Query().Get("lag"); v != "" {
			b, err := parseLag(v)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			lag = &b
		}
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		s := k.Status(ctx, false)
		now := time.Now()
		ok, reason := check(s, lag, now)
		body := healthBody{Role: s.Role(), State: "running", Designated: s.Designated, Primary: s.Primary,
			HoldsLease: s.HoldsLease, LeaseEpoch: s.LeaseEpoch, Fenced: s.Fenced, InRecovery: s.InRecovery,
			Streaming: s.Streaming, Reason: reason}
		switch {
		case s.Starting:
			body.State = "starting"
		case !s.Answering && s.PostmasterRunning:
			body.State = "not answering"
		case !s.Answering:
			body.State = "stopped"
		}
		if s.Answering && s.InRecovery {
			gap := int64(0)
			if s.ReceiveLSN > s.ReplayLSN {
				gap = int64(s.ReceiveLSN - s.ReplayLSN)
			}
			body.LagBytes = &gap
			if !s.ReplayTimestamp.IsZero() {
				sec := now.Sub(s.ReplayTimestamp).Seconds()
				body.LagSeconds = &sec
			}
		}
		code := http.StatusOK
		if !ok {
			code = http.StatusServiceUnavailable
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		if r.Method == http.MethodHead {
			return
		}
		_ = json.NewEncoder(w).Encode(body)
	}
}
