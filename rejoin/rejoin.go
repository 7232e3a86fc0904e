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

	"github.com/regentdb/regent/internal/pglsn"
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
		slog.String("final_lsn", pglsn.Format(l.FinalLSN)),
		slog.Uint64("timeline", uint64(l.Timeline)),
		slog.String("fork_lsn", pglsn.Format(l.ForkLSN)),
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
	return MeasureWith(ctx, l, newPrimary, ScanOptions{})
}

// MeasureWith is Measure with options for counting the lost transactions: with opts.Exclude
// (TableRelFiles of regent.heartbeat on the new primary), the transactions that only wrote
// those relations — regent's heartbeats — are not counted as lost (Loss.WAL.Excluded).
func MeasureWith(ctx context.Context, l Local, newPrimary pgconnect.Target, opts ScanOptions) (Loss, error) {
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
	opts.segSize = cd.WALSegmentSize
	loss.WAL, err = u.scanWAL(ctx, l, loss.ForkLSN, loss.FinalLSN, loss.Timeline, opts)
	if err != nil {
		return loss, err
	}
	loss.Transactions = loss.WAL.Lost()
	return loss, nil
}

// relFilesSQL lists the storage of a table ($1, a qualified name), of its indexes, and of its
// TOAST table and TOAST index, in the connection's database; nothing when there is no such
// table.
const relFilesSQL = `WITH t AS (
  SELECT c.oid, c.reltoastrelid FROM pg_class c WHERE c.oid = to_regclass($1)
), all_rels AS (
  SELECT oid FROM t
  UNION SELECT reltoastrelid FROM t WHERE reltoastrelid <> 0
  UNION SELECT i.indexrelid FROM t JOIN pg_index i ON i.indrelid IN (t.oid, t.reltoastrelid)
)
SELECT CASE WHEN c.reltablespace = 0 THEN d.dattablespace ELSE c.reltablespace END::bigint, d.oid::bigint,
       pg_relation_filenode(c.oid)::bigint
FROM all_rels a JOIN pg_class c ON c.oid = a.oid, pg_database d
WHERE d.datname = current_database() AND pg_relation_filenode(c.oid) IS NOT NULL
ORDER BY 1, 2, 3`

// TableRelFiles returns the storage (RelFile) of table (a qualified name such as
// "regent.heartbeat"), its indexes and its TOAST relations on target, in target's database:
// pass regent's heartbeat table read from the new primary as ScanOptions.Exclude, so that the
// heartbeat commits regent's leader makes on every primary are not counted as lost
// transactions. Only that table, not the whole regent schema: with the default search_path a
// role named "regent" creates its own tables in that schema. A table rewritten on the new
// primary after the fork (VACUUM FULL, TRUNCATE) has a new relfilenode there: the old
// primary's writes to it then count as lost, never the reverse. No such table gives an empty
// list, not an error.
func TableRelFiles(ctx context.Context, target pgconnect.Target, table string) ([]RelFile, error) {
	c, err := pgconnect.Connect(ctx, target, appName)
	if err != nil {
		return nil, fmt.Errorf("rejoin: looking up the storage of %s on %s: %w; retry once it answers", table, target, err)
	}
	defer pgconnect.Close(c)
	rows, err := c.Query(ctx, relFilesSQL, table)
	if err != nil {
		return nil, fmt.Errorf("rejoin: looking up the storage of %s on %s: %w", table, target, err)
	}
	defer rows.Close()
	var out []RelFile
	for rows.Next() {
		var spc, db, node int64
		if err := rows.Scan(&spc, &db, &node); err != nil {
			return nil, fmt.Errorf("rejoin: looking up the storage of %s on %s: %w", table, target, err)
		}
		out = append(out, RelFile{Tablespace: uint32(spc), Database: uint32(db), RelNode: uint32(node)})
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("rejoin: looking up the storage of %s on %s: %w", table, target, err)
	}
	return out, nil
}
