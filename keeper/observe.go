package keeper

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/regentdb/regent/internal/pglsn"
	"github.com/regentdb/regent/pgconnect"
)

// appName is the application_name of the keeper's own sessions.
const appName = "regent-keeper"

// observation is what one query on the local server found.
type observation struct {
	// At is when the query was sent (keeper's monotonic clock).
	At time.Time
	// OK: the server answered the query. Starting: it refused with 57P03 (starting up,
	// shutting down, or in crash recovery).
	OK, Starting bool
	// Err is why the query failed, when it did.
	Err error
	// InRecovery: pg_is_in_recovery(). ReadOnly: default_transaction_read_only is on for new
	// sessions (a fenced primary).
	InRecovery, ReadOnly bool
	// CurrentLSN is pg_current_wal_lsn() on a primary; ReceiveLSN and ReplayLSN are the
	// standby's (0 when null).
	CurrentLSN, ReceiveLSN, ReplayLSN uint64
	// ReplayTS is pg_last_xact_replay_timestamp() (zero when null).
	ReplayTS time.Time
	// Streaming: the WAL receiver reports status 'streaming'.
	Streaming bool
}

// Writable reports whether the observation shows a server taking writes by default.
func (o observation) Writable() bool { return o.OK && !o.InRecovery && !o.ReadOnly }

// LSN is the last WAL position the server has: written on a primary, received or replayed
// (the further) on a standby.
func (o observation) LSN() uint64 {
	if !o.InRecovery {
		return o.CurrentLSN
	}
	return max(o.ReceiveLSN, o.ReplayLSN)
}

// observeSQL is one round trip that answers everything the keeper asks of its server.
// pg_current_wal_lsn() fails during recovery, hence the CASE.
const observeSQL = `SELECT pg_is_in_recovery(),
	current_setting('default_transaction_read_only') = 'on',
	CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END,
	pg_last_wal_receive_lsn()::text,
	pg_last_wal_replay_lsn()::text,
	pg_last_xact_replay_timestamp(),
	coalesce((SELECT status = 'streaming' FROM pg_stat_wal_receiver LIMIT 1), false)`

// observer keeps one connection to the local server for observations.
type observer struct {
	target func() pgconnect.Target
	mu     sync.Mutex
	conn   *pgx.Conn
}

// Observe queries the local server within ctx. A broken kept connection (for instance one a
// fence terminated) is replaced once before giving up.
func (o *observer) Observe(ctx context.Context) observation {
	o.mu.Lock()
	defer o.mu.Unlock()
	obs := observation{At: time.Now()}
	for attempt := 0; attempt < 2; attempt++ {
		if o.conn == nil || o.conn.IsClosed() {
			c, err := pgconnect.Connect(ctx, o.target(), appName)
			if err != nil {
				obs.Err = err
				obs.Starting = isCannotConnectNow(err)
				return obs
			}
			o.conn = c
		}
		err := o.query(ctx, &obs)
		if err == nil {
			obs.OK, obs.Err = true, nil
			return obs
		}
		obs.Err = err
		pgconnect.Close(o.conn)
		o.conn = nil
		if ctx.Err() != nil {
			return obs
		}
		obs.At = time.Now()
	}
	return obs
}

func (o *observer) query(ctx context.Context, obs *observation) error {
	var cur, recv, replay *string
	var ts *time.Time
	if err := o.conn.QueryRow(ctx, observeSQL).Scan(&obs.InRecovery, &obs.ReadOnly, &cur, &recv, &replay, &ts, &obs.Streaming); err != nil {
		return fmt.Errorf("observe the local server: %w", err)
	}
	for _, f := range []struct {
		s   *string
		dst *uint64
	}{{cur, &obs.CurrentLSN}, {recv, &obs.ReceiveLSN}, {replay, &obs.ReplayLSN}} {
		if f.s == nil {
			continue
		}
		v, err := pglsn.Parse(*f.s)
		if err != nil {
			return err
		}
		*f.dst = v
	}
	if ts != nil {
		obs.ReplayTS = *ts
	}
	return nil
}

// Close drops the kept connection.
func (o *observer) Close() {
	o.mu.Lock()
	defer o.mu.Unlock()
	pgconnect.Close(o.conn)
	o.conn = nil
}

// isCannotConnectNow reports SQLSTATE 57P03: the server is starting up, shutting down or in
// crash recovery, so it takes no writes at this moment.
func isCannotConnectNow(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "57P03"
}

// inRecovery asks the server, on a new connection, whether it is in recovery.
func inRecovery(ctx context.Context, t pgconnect.Target) (bool, error) {
	c, err := pgconnect.Connect(ctx, t, appName)
	if err != nil {
		return false, err
	}
	defer pgconnect.Close(c)
	var rec bool
	if err := c.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec); err != nil {
		return false, fmt.Errorf("ask %s whether it is in recovery: %w", t, err)
	}
	return rec, nil
}
