package probe

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/regentdb/regent/internal/pglsn"
)

// Result is what one probe of one node found.
type Result struct {
	// Target is the probed target, without its password.
	Target Target
	// At is when the probe started.
	At time.Time
	// Latency is how long the whole probe took, connecting included.
	Latency time.Duration

	// Reachable is true when the probe query succeeded on a server of the
	// expected cluster. When false, ErrorClass and Err say why. Note that
	// a server that refuses the login (ClassAuth) or answers with an
	// error (ClassServerError) is alive though not Reachable: callers
	// deciding whether a primary is down can tell these apart.
	Reachable bool
	// ErrorClass is ClassNone when Reachable, else the failure's class.
	ErrorClass ErrorClass
	// Err is the failure, or nil.
	Err error

	// InRecovery is pg_is_in_recovery(): true on a standby.
	InRecovery bool
	// CurrentLSN is pg_current_wal_lsn() on a primary (0 on a standby).
	CurrentLSN uint64
	// ReceivedLSN is pg_last_wal_receive_lsn() on a standby: WAL received
	// and flushed to disk by streaming replication (0 when none yet).
	ReceivedLSN uint64
	// ReplayLSN is pg_last_wal_replay_lsn() on a standby.
	ReplayLSN uint64
	// Timeline is the timeline a primary writes (from the name of the WAL
	// file at its current LSN, right from the moment of promotion), or the
	// timeline a standby receives (pg_stat_wal_receiver.received_tli),
	// falling back to its last checkpoint's (pg_control_checkpoint()).
	Timeline uint32
	// SystemIdentifier is the cluster's system identifier from
	// pg_control_system(). It is set on ClassWrongSystem results too, to
	// show what answered.
	SystemIdentifier uint64
	// WalReceiverStatus is pg_stat_wal_receiver.status on a standby
	// ("streaming", "starting", "waiting", ...); "" when no WAL receiver
	// runs (a primary, or a standby that lost its upstream).
	WalReceiverStatus string
	// SenderHost and SenderPort are the upstream the WAL receiver is
	// connected to; empty without a WAL receiver or without the
	// privilege to see them (pg_read_all_stats, part of pg_monitor).
	SenderHost string
	SenderPort uint16 // see SenderHost
	// ReplayPaused is true when replay is paused on a standby
	// (pg_get_wal_replay_pause_state() = 'paused').
	ReplayPaused bool
	// LastReplayTimestamp is pg_last_xact_replay_timestamp(): the commit
	// time of the last transaction replayed; zero when none. It stops
	// moving when the primary is idle, so it alone does not measure lag.
	LastReplayTimestamp time.Time
	// HeartbeatAt is the newest regent.heartbeat time of the target's cluster visible on the
	// node (written on the primary by the witness leader, replicated to standbys); zero when
	// there is none yet.
	HeartbeatAt time.Time
}

// Role returns "primary" or "replica" for a reachable node, else "".
func (r Result) Role() string {
	switch {
	case !r.Reachable:
		return ""
	case r.InRecovery:
		return "replica"
	default:
		return "primary"
	}
}

// Position returns the node's own WAL position: CurrentLSN on a primary,
// ReplayLSN on a standby.
func (r Result) Position() uint64 {
	if r.InRecovery {
		return r.ReplayLSN
	}
	return r.CurrentLSN
}

// String summarises the result on one line.
func (r Result) String() string {
	if !r.Reachable {
		return fmt.Sprintf("%s unreachable (%s): %v", r.Target, r.ErrorClass, r.Err)
	}
	if r.InRecovery {
		return fmt.Sprintf("%s replica tl %d received %s replayed %s receiver %q paused %v (%v)",
			r.Target, r.Timeline, pglsn.Format(r.ReceivedLSN), pglsn.Format(r.ReplayLSN), r.WalReceiverStatus, r.ReplayPaused, r.Latency)
	}
	return fmt.Sprintf("%s primary tl %d at %s (%v)", r.Target, r.Timeline, pglsn.Format(r.CurrentLSN), r.Latency)
}

// LogValue logs the result's main fields.
func (r Result) LogValue() slog.Value {
	attrs := []slog.Attr{
		slog.Any("target", r.Target),
		slog.Bool("reachable", r.Reachable),
		slog.Duration("latency", r.Latency),
	}
	if !r.Reachable {
		attrs = append(attrs, slog.String("class", string(r.ErrorClass)), slog.Any("err", r.Err))
	} else {
		attrs = append(attrs, slog.String("role", r.Role()), slog.Uint64("timeline", uint64(r.Timeline)),
			slog.String("lsn", pglsn.Format(r.Position())))
	}
	return slog.GroupValue(attrs...)
}
