package keeper

import (
	"context"
	"time"
)

// Status is what the keeper knows about its server and its lease at one moment.
type Status struct {
	// Cluster and Node name the keeper's server.
	Cluster, Node string
	// PostmasterRunning: a postmaster runs on data_dir. Answering: it answered a query.
	PostmasterRunning, Answering bool
	// Starting: the server refused connections because it is starting up, shutting down or
	// in crash recovery (SQLSTATE 57P03).
	Starting bool
	// InRecovery: pg_is_in_recovery() (when answering) or, when it does not answer, the
	// control file says archive recovery. CrashRecovery: the control file says crash recovery.
	InRecovery, CrashRecovery bool
	// ReadOnly: default_transaction_read_only is on for new sessions.
	ReadOnly bool
	// Streaming: a standby's WAL receiver is streaming.
	Streaming bool
	// FinalLSN is the last WAL position the server has (see DESIGN.md, "final LSN");
	// ReceiveLSN and ReplayLSN are a standby's, ReplayTimestamp its last replayed commit's time.
	FinalLSN, ReceiveLSN, ReplayLSN uint64
	ReplayTimestamp                 time.Time
	// Designated: the witnesses' newest lease epoch names this node primary. Primary is the
	// node they name (empty when no witness answered yet).
	Designated bool
	Primary    string
	// HoldsLease: a majority-granted renewal covers now. LeaseEpoch is the epoch renewed.
	HoldsLease bool
	LeaseEpoch uint64
	// LastGrantedSend is the send time of the last majority-granted round and LeaseDeadline
	// the keeper-clock time by which it must fence (fencing.KeeperDeadline); zero when never
	// granted. Both carry the monotonic clock reading.
	LastGrantedSend, LeaseDeadline time.Time
	// Fenced: the keeper holds its server fenced (FenceReason says why), or the server is a
	// read-only primary, or it is stopped by a STOP instruction (Stopped).
	Fenced      bool
	FenceReason FenceReason
	Stopped     bool
	// FencedAt is when the keeper last fenced its server (zero: never, since it started).
	FencedAt time.Time
	// Highest is the newest fencing token obeyed.
	Highest Token
	// LastRejoin is the last completed REJOIN's result (RejoinResult as JSON; empty: none) and
	// LastRejoinToken its token; KeeperStatus reports it as a RejoinReport, or the last failed
	// attempt when that is newer. Rejoining: a REJOIN runs now.
	LastRejoin      string
	LastRejoinToken Token
	Rejoining       bool
	// Restarting: the keeper is restarting its crashed server in place, as the designated
	// primary, for RestartElapsed so far (restart.go says exactly when this is reported).
	Restarting     bool
	RestartElapsed time.Duration
	// ObservedAt is when the server was queried; ObserveError why the query failed.
	ObservedAt   time.Time
	ObserveError string
}

// Role names what the server is for health checks: primary (takes writes), fenced (a
// read-only primary, or stopped by the keeper), replica, starting, stopped or unknown.
func (s Status) Role() string {
	switch {
	case s.Answering && s.InRecovery:
		return "replica"
	case s.Answering && s.ReadOnly:
		return "fenced"
	case s.Answering:
		return "primary"
	case s.Starting:
		return "starting"
	case !s.PostmasterRunning && s.Fenced:
		return "fenced"
	case !s.PostmasterRunning:
		return "stopped"
	}
	return "unknown"
}

// Status queries the local server (within a second) and reports it with the lease. With full
// set it also asks pg_ctl status and, when the server does not answer, pg_controldata — two
// programs to run, so the health endpoints leave it unset.
func (k *Keeper) Status(ctx context.Context, full bool) Status {
	if full {
		k.checkRunning(ctx)
	}
	o := k.observe(ctx, time.Second)
	st := k.state.Get()
	now := time.Now()
	k.mu.Lock()
	s := Status{
		Cluster: k.cfg.Cluster, Node: k.cfg.NodeName,
		PostmasterRunning: k.running || o.OK || o.Starting,
		Answering:         o.OK,
		Starting:          o.Starting,
		InRecovery:        o.OK && o.InRecovery,
		ReadOnly:          o.OK && o.ReadOnly,
		Streaming:         o.OK && o.Streaming,
		ReceiveLSN:        o.ReceiveLSN, ReplayLSN: o.ReplayLSN, ReplayTimestamp: o.ReplayTS,
		Designated:      k.lease.designated,
		Primary:         k.lease.primary,
		HoldsLease:      k.holdsLeaseLocked(now),
		LeaseEpoch:      k.lease.epoch,
		LastGrantedSend: k.lease.grantSend,
		LeaseDeadline:   k.deadlineLocked(),
		FenceReason:     st.Fence,
		Stopped:         st.Stopped,
		FencedAt:        k.fencedAt,
		Highest:         st.Highest,
		LastRejoin:      st.Rejoin,
		LastRejoinToken: st.RejoinToken,
		Rejoining:       k.rejoin.running.Load(),
		ObservedAt:      o.At,
	}
	k.mu.Unlock()
	if o.Err != nil {
		s.ObserveError = o.Err.Error()
	}
	if o.OK {
		s.FinalLSN = o.LSN()
	}
	s.Fenced = st.Fence != FenceNone || st.Stopped || (o.OK && !o.InRecovery && o.ReadOnly)
	k.mu.Lock()
	if full && !s.PostmasterRunning && s.Designated && !st.Stopped {
		// Asked before the control loop's next look: the restart begins now (the loop is
		// poked to carry it out), so the asker never hears "not restarting" about a crash
		// the keeper is about to repair.
		k.restart.begin(now)
		defer k.poke()
	}
	if r, d := k.restart.report(now); r && s.Designated && !st.Stopped {
		s.Restarting, s.RestartElapsed = true, d
	}
	k.mu.Unlock()
	if full && !o.OK {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		cd, err := k.pg.ControlData(cctx)
		cancel()
		if err == nil {
			s.CrashRecovery, s.FinalLSN = controlFacts(cd)
			s.InRecovery = cd[cdState] == "in archive recovery" || cd[cdState] == "shut down in recovery"
		} else {
			k.log.Warn("pg_controldata failed", "err", err)
		}
	}
	return s
}
