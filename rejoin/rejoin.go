// Package rejoin brings an old primary back as a standby after a failover and measures exactly
// what it lost: the end of its WAL (FinalLSN), where the new primary's timeline forked from it
// (ForkPoint), the bytes and committed transactions in between (DataLossBytes, LostTransactions,
// or Measure for all of it), then rewinds it with pg_rewind — or re-clones it with
// pg_basebackup when a rewind is impossible — (Rewind, Reclone) and configures it to stream
// from the new primary (ConfigureStandby).
//
// It works on the local data directory of a stopped server and runs PostgreSQL's own programs
// (pg_controldata, pg_waldump, postgres --single, pg_rewind, pg_basebackup) as the cluster's OS
// user (Local.RunAs). It knows nothing of the keeper, Raft or fencing tokens: the caller decides
// when a rejoin may happen and keeps the node fenced meanwhile.
//
// The order matters: measure first (Measure, or FinalLSN then ForkPoint then LostTransactions),
// because crash recovery adds WAL of its own and pg_rewind replaces the WAL being measured; create
// the slot on the new primary (CreateSlot) before Rewind, so that it keeps the WAL the node will
// need; then Rewind, ConfigureStandby, and start the server.
//
// Secrets: a Target's password reaches pg_rewind and pg_basebackup through a password file of
// mode 0600 that is removed afterwards, never a command line or the environment; the
// primary_conninfo ConfigureStandby writes is in a file of mode 0600. Nothing here logs either,
// and no error contains them.
//
// See DESIGN.md in this directory for what is measured, how exactly, and the limits.
package rejoin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/regentdb/regent/pgconnect"
	"github.com/regentdb/regent/pgops"
)

// Errors; match them with errors.Is.
var (
	// ErrRunning: the operation needs the server stopped, and processes still use the data
	// directory.
	ErrRunning = errors.New("rejoin: PostgreSQL is running on the data directory")
	// ErrBusy: another rejoin operation holds the data directory's lock.
	ErrBusy = errors.New("rejoin: another rejoin operation is in progress")
	// ErrControlFile: pg_controldata's output is unusable (damaged control file, wrong version).
	ErrControlFile = errors.New("rejoin: the control file cannot be read")
	// ErrNoValidWAL: no valid WAL record was found after the latest checkpoint's REDO point.
	ErrNoValidWAL = errors.New("rejoin: no valid WAL found")
	// ErrWALMissing: WAL needed to count lost transactions is no longer in pg_wal.
	ErrWALMissing = errors.New("rejoin: WAL segments are missing")
	// ErrBadHistory: a timeline history file could not be parsed.
	ErrBadHistory = errors.New("rejoin: malformed timeline history")
	// ErrNotAncestor: the old primary's timeline is not an ancestor of the new primary's.
	ErrNotAncestor = errors.New("rejoin: the old primary's timeline is not in the new primary's history")
	// ErrSameTimeline: the new primary is on the old primary's timeline, so nothing forked (or
	// its promotion has not been checkpointed yet).
	ErrSameTimeline = errors.New("rejoin: the new primary is on the same timeline")
	// ErrDifferentSystem: the source belongs to another cluster (its system identifier
	// differs); nothing was changed.
	ErrDifferentSystem = errors.New("rejoin: the source is a different cluster")
	// ErrNotCleanlyStopped: the server was not stopped cleanly and regent will not finish its
	// recovery itself (it was a standby, a signal file asks for archive recovery, or a
	// backup_label says it is a rewind or clone waiting to be replayed as a standby).
	ErrNotCleanlyStopped = errors.New("rejoin: the server was not stopped cleanly")
	// ErrRewindImpossible: pg_rewind cannot rewind this data directory (no data checksums and
	// wal_log_hints off, target WAL missing since the last common checkpoint, no common
	// timeline); re-clone it. The data directory is as it was after crash recovery.
	ErrRewindImpossible = errors.New("rejoin: pg_rewind cannot rewind this server")
	// ErrTargetDamaged: the data directory is unusable — pg_rewind failed after it had started
	// changing it, a base backup into it was cut short, or it is empty or missing (an
	// interrupted re-clone); re-clone it.
	ErrTargetDamaged = errors.New("rejoin: pg_rewind failed part way; the data directory is damaged")
)

// DataLossBytes is the number of WAL bytes the old primary wrote after the fork point: the
// exact size of the writes the failover lost when final is FinalLSN's and fork is ForkPoint's.
// It is 0 when fork >= final (the new primary had everything). It is pgops.DataLossBytes with
// the exact end of WAL in place of the old primary's last position seen by the witnesses.
func DataLossBytes(final, fork uint64) int64 { return pgops.DataLossBytes(final, fork) }

// Loss is the exact data loss of a failover, measured on the old primary.
type Loss struct {
	// FinalLSN and Timeline are the end of the old primary's WAL and its timeline (FinalLSN).
	FinalLSN uint64
	Timeline uint32
	// ForkLSN is where the new primary's history left Timeline (ForkPoint).
	ForkLSN uint64
	// NewTimeline is the timeline the new primary was on when asked.
	NewTimeline uint32
	// Bytes is DataLossBytes(FinalLSN, ForkLSN).
	Bytes int64
	// Transactions is the number of committed transactions lost (LostTransactions), or -1 when
	// the WAL to count them is gone (Measure then returns ErrWALMissing with this Loss).
	Transactions int
	// WAL is the breakdown of the transaction records between ForkLSN and FinalLSN.
	WAL WALSummary
}

// LogValue logs the measurement with LSNs in PostgreSQL's notation.
func (l Loss) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("final_lsn", FormatLSN(l.FinalLSN)),
		slog.Uint64("timeline", uint64(l.Timeline)),
		slog.String("fork_lsn", FormatLSN(l.ForkLSN)),
		slog.Int64("bytes", l.Bytes),
		slog.Int("transactions", l.Transactions),
	)
}

// Measure measures the exact data loss of the stopped old primary l against newPrimary: it
// checks that both are the same cluster (system identifier), then FinalLSN, ForkPoint,
// DataLossBytes and ScanWAL. Call it before Rewind, on a server that has not been started since
// it stopped or crashed (ErrRunning while it runs). newPrimary needs a superuser (pg_read_file).
//
// When the WAL after the fork point is no longer in pg_wal, Measure returns the Loss with exact
// Bytes and Transactions -1, and an error wrapping ErrWALMissing.
func Measure(ctx context.Context, l Local, newPrimary pgconnect.Target) (Loss, error) {
	if err := l.validate(); err != nil {
		return Loss{}, err
	}
	u, err := l.resolveUser()
	if err != nil {
		return Loss{}, err
	}
	unlock, err := l.lockStopped()
	if err != nil {
		return Loss{}, err
	}
	defer unlock()
	cd, err := u.controlData(ctx, l)
	if err != nil {
		return Loss{}, err
	}
	c, err := pgconnect.Connect(ctx, newPrimary, appName)
	if err != nil {
		return Loss{}, fmt.Errorf("rejoin: measuring the data loss against %s: %w; retry once it answers", newPrimary, err)
	}
	sysid, err := systemIdentifier(ctx, c)
	var newTLI uint32
	if err == nil {
		newTLI, err = currentTimeline(ctx, c)
	}
	pgconnect.Close(c)
	if err != nil {
		return Loss{}, fmt.Errorf("rejoin: reading the identity and timeline of %s: %w; the role needs superuser", newPrimary, err)
	}
	if sysid != cd.SystemIdentifier {
		return Loss{}, fmt.Errorf("%w: %s has system identifier %d, %s has %d; check which server is the new primary", ErrDifferentSystem, newPrimary, sysid, l.DataDir, cd.SystemIdentifier)
	}
	end, err := u.walEnd(ctx, l, cd)
	if err != nil {
		return Loss{}, err
	}
	loss := Loss{FinalLSN: end.lsn, Timeline: end.tli, NewTimeline: newTLI, Transactions: -1}
	if loss.ForkLSN, err = ForkPoint(ctx, newPrimary, end.tli); err != nil {
		return loss, err
	}
	loss.Bytes = DataLossBytes(loss.FinalLSN, loss.ForkLSN)
	loss.WAL, err = u.scanWAL(ctx, l, loss.ForkLSN, loss.FinalLSN, loss.Timeline)
	if err != nil {
		return loss, err
	}
	loss.Transactions = loss.WAL.Lost()
	return loss, nil
}
