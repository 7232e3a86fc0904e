// Package heartbeat writes regent's heartbeat row on a cluster's primary. The row replicates to
// the standbys, where the probes read it back: comparing the newest heartbeat visible on the
// primary with the newest one a standby has replayed gives true lag in seconds, even on an idle
// primary (where pg_last_xact_replay_timestamp() only says when the last client commit was),
// and both times come from the primary's clock, so clock offsets between servers do not matter.
package heartbeat

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Schema creates regent's schema and heartbeat table when missing.
const Schema = `CREATE SCHEMA IF NOT EXISTS regent;
CREATE TABLE IF NOT EXISTS regent.heartbeat (
    cluster text NOT NULL,
    node    text NOT NULL,
    region  text NOT NULL,
    ts      timestamptz NOT NULL,
    lsn     pg_lsn NOT NULL,
    PRIMARY KEY (cluster, node)
)`

const upsert = `INSERT INTO regent.heartbeat (cluster, node, region, ts, lsn)
VALUES ($1, $2, $3, now(), pg_current_wal_lsn())
ON CONFLICT (cluster, node) DO UPDATE SET region = excluded.region, ts = excluded.ts, lsn = excluded.lsn
RETURNING ts`

// ReadExpr is a SQL expression giving the newest heartbeat time of a cluster ($1) visible on
// the server it runs on, or NULL when the table does not exist yet, holds no row for the
// cluster, or the user may not read it. It is safe on a standby and on any server, and needs no
// extra round trip: the table is only named inside query_to_xml's dynamic SQL, which runs only
// when the table exists and may be read (a plain reference would fail at parse time on a server
// that has no table yet). PlainReadExpr is the cheaper form for servers known to have the table.
const ReadExpr = `CASE WHEN to_regnamespace('regent') IS NULL THEN NULL
  WHEN NOT has_schema_privilege('regent', 'USAGE') THEN NULL
  WHEN to_regclass('regent.heartbeat') IS NULL THEN NULL
  WHEN NOT has_table_privilege('regent.heartbeat', 'SELECT') THEN NULL
  ELSE ((xpath('/row/m/text()', query_to_xml(format(
    'SELECT max(ts) AS m FROM regent.heartbeat WHERE cluster = %L', $1::text), false, true, '')))[1])::text::timestamptz END`

// PlainReadExpr is ReadExpr for a server where regent.heartbeat exists and may be read: a plain
// subquery, so that a prepared statement plans it once. It fails (undefined table, permission
// denied) where ReadExpr answers NULL.
const PlainReadExpr = `(SELECT max(ts) FROM regent.heartbeat WHERE cluster = $1::text)`

// ReadQuery selects ReadExpr.
const ReadQuery = "SELECT " + ReadExpr

// Target is the primary to write on.
type Target struct {
	Cluster, Node, Region string
	Host                  string
	Port                  uint16
	User, Database        string
	// Password is used to connect; it never appears in errors or String.
	Password string
	SSLMode  string
}

// String names the target without its password.
func (t Target) String() string {
	return fmt.Sprintf("%s/%s (%s)", t.Cluster, t.Node, net.JoinHostPort(t.Host, strconv.Itoa(int(t.Port))))
}

func (t Target) key() string {
	return t.Cluster + "\x00" + t.Node + "\x00" + net.JoinHostPort(t.Host, strconv.Itoa(int(t.Port))) + "\x00" + t.User + "\x00" + t.Database + "\x00" + t.SSLMode
}

// Writer keeps one connection per primary and writes heartbeats on it. Safe for concurrent use:
// beats on different primaries run in parallel (a slow primary delays only its own), beats on
// one primary one at a time.
type Writer struct {
	timeout time.Duration
	mu      sync.Mutex
	targets map[string]*beatSlot
}

// beatSlot is one primary's connection; sem (capacity 1) is held by whoever uses it.
type beatSlot struct {
	sem    chan struct{}
	conn   *pgx.Conn
	schema bool // the schema is known to exist on conn's server
	gone   bool // forgotten: a beat that still holds this slot must not connect
}

// NewWriter returns a Writer whose every Beat is bounded by timeout (connect included).
func NewWriter(timeout time.Duration) *Writer {
	return &Writer{timeout: timeout, targets: map[string]*beatSlot{}}
}

// Beat writes the cluster's heartbeat row on the primary, creating the schema first when this
// connection has not yet. It returns the heartbeat time the primary recorded. The timeout
// covers waiting for a previous beat on the same primary.
func (w *Writer) Beat(ctx context.Context, t Target) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, w.timeout)
	defer cancel()
	w.mu.Lock()
	sl := w.targets[t.key()]
	if sl == nil {
		sl = &beatSlot{sem: make(chan struct{}, 1)}
		w.targets[t.key()] = sl
	}
	w.mu.Unlock()
	select {
	case sl.sem <- struct{}{}:
	case <-ctx.Done():
		return time.Time{}, fmt.Errorf("write heartbeat on %s: the previous one is still running: %w", t, ctx.Err())
	}
	defer func() { <-sl.sem }()
	if sl.gone {
		return time.Time{}, fmt.Errorf("write heartbeat on %s: the target was forgotten meanwhile (its primary moved or its cluster was deleted)", t)
	}
	conn, err := sl.connect(ctx, t)
	if err != nil {
		return time.Time{}, err
	}
	if !sl.schema {
		if _, err := conn.Exec(ctx, Schema); err != nil && !duplicate(err) {
			sl.drop()
			return time.Time{}, fmt.Errorf("create regent.heartbeat on %s (the probe user needs CREATE on the database): %w", t, err)
		}
		sl.schema = true
	}
	var ts time.Time
	if err := conn.QueryRow(ctx, upsert, t.Cluster, t.Node, t.Region).Scan(&ts); err != nil {
		sl.drop()
		return time.Time{}, fmt.Errorf("write heartbeat on %s: %w", t, err)
	}
	return ts, nil
}

// duplicate reports a race between two writers creating the schema at once.
func duplicate(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "23505" || pe.Code == "42P06" || pe.Code == "42P07")
}

// connect returns the slot's connection, opening it when there is none (sem held).
func (sl *beatSlot) connect(ctx context.Context, t Target) (*pgx.Conn, error) {
	if sl.conn != nil && !sl.conn.IsClosed() {
		return sl.conn, nil
	}
	cfg, err := pgx.ParseConfig("")
	if err != nil {
		return nil, fmt.Errorf("heartbeat connection config: %w", err)
	}
	cfg.Host, cfg.Port, cfg.User, cfg.Database, cfg.Password = t.Host, t.Port, t.User, t.Database, t.Password
	cfg.RuntimeParams["application_name"] = "regent-heartbeat"
	switch t.SSLMode {
	case "", "disable", "allow", "prefer":
		// Plain TCP: heartbeats carry no secrets; TLS for them follows the probes' settings
		// once TLS lands for probing too.
		cfg.TLSConfig = nil
		cfg.Fallbacks = nil
	default:
		return nil, fmt.Errorf("heartbeat to %s: sslmode %q is not supported yet; use prefer or disable", t, t.SSLMode)
	}
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to %s for the heartbeat: %w", t, err)
	}
	sl.conn, sl.schema = c, false
	return c, nil
}

// drop closes the slot's connection (sem held).
func (sl *beatSlot) drop() {
	if sl.conn != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		sl.conn.Close(ctx)
		cancel()
		sl.conn = nil
	}
	sl.schema = false
}

// Forget closes the connections of targets not in keep (a cluster was deleted or its primary
// moved), after any beat in progress on them.
func (w *Writer) Forget(keep []Target) {
	want := map[string]bool{}
	for _, t := range keep {
		want[t.key()] = true
	}
	w.mu.Lock()
	var gone []*beatSlot
	for k, sl := range w.targets {
		if !want[k] {
			gone = append(gone, sl)
			delete(w.targets, k)
		}
	}
	w.mu.Unlock()
	for _, sl := range gone {
		sl.sem <- struct{}{}
		sl.gone = true
		sl.drop()
		<-sl.sem
	}
}

// Close closes every connection.
func (w *Writer) Close() {
	w.Forget(nil)
}
