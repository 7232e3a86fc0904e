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
// the server it runs on, or NULL when the table does not exist yet or holds no row for the
// cluster. It is safe on a standby and needs no extra round trip: the table is only named inside
// query_to_xml's dynamic SQL, which runs only when the table exists (a plain reference would
// fail at parse time on a server that has no table yet).
const ReadExpr = `CASE WHEN to_regclass('regent.heartbeat') IS NULL THEN NULL
  ELSE ((xpath('/row/m/text()', query_to_xml(format(
    'SELECT max(ts) AS m FROM regent.heartbeat WHERE cluster = %L', $1::text), false, true, '')))[1])::text::timestamptz END`

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

// Writer keeps one connection per primary and writes heartbeats on it. Safe for concurrent use.
type Writer struct {
	timeout time.Duration
	mu      sync.Mutex
	conns   map[string]*pgx.Conn
	schema  map[string]bool
}

// NewWriter returns a Writer whose every Beat is bounded by timeout (connect included).
func NewWriter(timeout time.Duration) *Writer {
	return &Writer{timeout: timeout, conns: map[string]*pgx.Conn{}, schema: map[string]bool{}}
}

// Beat writes the cluster's heartbeat row on the primary, creating the schema first when this
// connection has not yet. It returns the heartbeat time the primary recorded.
func (w *Writer) Beat(ctx context.Context, t Target) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, w.timeout)
	defer cancel()
	w.mu.Lock()
	defer w.mu.Unlock()
	k := t.key()
	conn, err := w.conn(ctx, k, t)
	if err != nil {
		return time.Time{}, err
	}
	if !w.schema[k] {
		if _, err := conn.Exec(ctx, Schema); err != nil && !duplicate(err) {
			w.drop(k)
			return time.Time{}, fmt.Errorf("create regent.heartbeat on %s (the probe user needs CREATE on the database): %w", t, err)
		}
		w.schema[k] = true
	}
	var ts time.Time
	if err := conn.QueryRow(ctx, upsert, t.Cluster, t.Node, t.Region).Scan(&ts); err != nil {
		w.drop(k)
		return time.Time{}, fmt.Errorf("write heartbeat on %s: %w", t, err)
	}
	return ts, nil
}

// duplicate reports a race between two writers creating the schema at once.
func duplicate(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "23505" || pe.Code == "42P06" || pe.Code == "42P07")
}

func (w *Writer) conn(ctx context.Context, k string, t Target) (*pgx.Conn, error) {
	if c, ok := w.conns[k]; ok && !c.IsClosed() {
		return c, nil
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
	w.conns[k] = c
	delete(w.schema, k)
	return c, nil
}

func (w *Writer) drop(k string) {
	if c, ok := w.conns[k]; ok {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		c.Close(ctx)
		cancel()
		delete(w.conns, k)
	}
	delete(w.schema, k)
}

// Forget closes the connections of targets not in keep (a cluster was deleted or its primary
// moved).
func (w *Writer) Forget(keep []Target) {
	want := map[string]bool{}
	for _, t := range keep {
		want[t.key()] = true
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for k := range w.conns {
		if !want[k] {
			w.drop(k)
		}
	}
}

// Close closes every connection.
func (w *Writer) Close() {
	w.Forget(nil)
}
