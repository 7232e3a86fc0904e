package probe

import (
	"github.com/regentdb/regent/heartbeat"

	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
)

// DefaultTimeout is the probe timeout when Options.Timeout is 0.
const DefaultTimeout = 400 * time.Millisecond

// DefaultApplicationName is the application_name probes connect with.
const DefaultApplicationName = "regent-probe"

// ErrClosed is returned (in Result.Err, class ClassOther) by a Prober that
// has been closed.
var ErrClosed = errors.New("probe: prober is closed")

// Options configure a Prober.
type Options struct {
	// Timeout bounds each probe, connecting included; default
	// DefaultTimeout.
	Timeout time.Duration
	// ConnectTimeout bounds a connection attempt, which may outlive the
	// probe that started it, and how long a timed-out query may wait for
	// the server to honour its cancel request before the connection is
	// closed; default the larger of DefaultConnectTimeout and Timeout.
	ConnectTimeout time.Duration
	// ApplicationName is sent to the server; default
	// DefaultApplicationName.
	ApplicationName string
	// Logger receives debug messages about connections; default none.
	Logger *slog.Logger
}

// Prober probes PostgreSQL nodes. It keeps one connection per target (by
// Target.Key) and reconnects when it breaks or the target's connection
// parameters change. Probe is safe for concurrent use; probes of different
// targets run in parallel, probes of one target one at a time.
//
// A probe returns within its timeout, but the work it started may outlive
// it, so that a slow server slows regent's probing down instead of turning
// it into a storm of new connections: a query that times out is cancelled
// with a cancel request (the kept connection survives unless the server
// also ignores the cancel for ConnectTimeout), and a connection attempt
// runs for up to ConnectTimeout in the background, the next probe using the
// connection it made. Failed connection attempts back off (with jitter).
type Prober struct {
	timeout        time.Duration
	connectTimeout time.Duration
	appName        string
	log            *slog.Logger

	mu     sync.Mutex
	slots  map[string]*slot
	closed bool
}

// slot holds the kept connection of one target. sem (capacity 1) is held
// by whoever uses conn: a probe, or the background work a probe left behind.
type slot struct {
	sem    chan struct{}
	conn   *pgx.Conn
	params string // fingerprint of the parameters conn was opened with
	major  int    // server major version of conn
	gone   bool   // removed from the Prober: do not keep a connection
	// guarded: read the heartbeat through heartbeat.ReadExpr (the table was missing or not
	// readable when last tried); else plainly.
	guarded bool
	// ctx ends when the slot is forgotten; it bounds background connecting.
	ctx    context.Context
	cancel context.CancelFunc

	// Connection attempts that failed in a row, when the next may start,
	// and why the last failed (reported until then).
	failures    int
	nextConnect time.Time
	connectErr  error
}

// Connection-attempt backoff: the first retry is immediate (the next
// probe), then the wait doubles from backoffBase up to backoffMax, ±20%.
const (
	backoffBase = 100 * time.Millisecond
	backoffMax  = time.Second
)

// DefaultConnectTimeout bounds a connection attempt (and a cancelled query's
// wait for the server) when Options.ConnectTimeout is 0.
const DefaultConnectTimeout = 5 * time.Second

// NewProber returns a Prober. Close it to close its connections.
func NewProber(opts Options) *Prober {
	p := &Prober{
		timeout:        opts.Timeout,
		connectTimeout: opts.ConnectTimeout,
		appName:        opts.ApplicationName,
		log:            opts.Logger,
		slots:          make(map[string]*slot),
	}
	if p.timeout <= 0 {
		p.timeout = DefaultTimeout
	}
	if p.connectTimeout <= 0 {
		p.connectTimeout = max(DefaultConnectTimeout, p.timeout)
	}
	if p.appName == "" {
		p.appName = DefaultApplicationName
	}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	return p
}

// Timeout returns the per-probe timeout.
func (p *Prober) Timeout() time.Duration { return p.timeout }

// probeQuery reads everything a Result needs in one round trip; it works on
// a primary and on a standby (PostgreSQL 14 or later).
const probeQuery = `WITH r AS MATERIALIZED (SELECT pg_is_in_recovery() AS rec)
SELECT r.rec,
  CASE WHEN NOT r.rec THEN pg_current_wal_lsn()::text END,
  pg_last_wal_receive_lsn()::text,
  pg_last_wal_replay_lsn()::text,
  (SELECT system_identifier FROM pg_control_system()),
  CASE WHEN NOT r.rec THEN ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint
       ELSE coalesce(w.received_tli, (SELECT timeline_id FROM pg_control_checkpoint()))::bigint END,
  coalesce(w.status, ''),
  coalesce(w.sender_host, ''),
  coalesce(w.sender_port, 0)::bigint,
  CASE WHEN r.rec THEN PAUSED ELSE false END,
  pg_last_xact_replay_timestamp(),
  HEARTBEAT
FROM r LEFT JOIN pg_stat_wal_receiver w ON true`

// probeQueries are the probe query's forms: by server version (before 14,
// pg_is_wal_replay_paused() is true from the request on) and by how the heartbeat is read —
// plainly where the table is known to be readable (cheap once prepared), else through
// heartbeat.ReadExpr, which answers NULL without the table or the right to read it.
var probeQueries = func() (q [2][2]string) {
	for v, paused := range []string{"pg_get_wal_replay_pause_state() = 'paused'", "pg_is_wal_replay_paused()"} {
		for h, hb := range []string{heartbeat.PlainReadExpr, heartbeat.ReadExpr} {
			q[v][h] = strings.Replace(strings.Replace(probeQuery, "PAUSED", paused, 1), "HEARTBEAT", hb, 1)
		}
	}
	return q
}()

// Probe probes one target and returns what it found. It never takes longer
// than the Prober's timeout (or ctx's deadline, if earlier), connecting
// included. A failure is reported in the Result, never as a panic or a
// hang.
//
// A kept connection that fails (the server restarted, a middlebox dropped
// it) is replaced and the query retried once within the same deadline, so a
// stale connection alone never makes a node look unreachable.
func (p *Prober) Probe(ctx context.Context, t Target) Result {
	start := time.Now()
	res := Result{Target: t.redacted(), At: start}
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	err := p.probe(ctx, t, &res)
	res.Latency = time.Since(start)
	if err != nil {
		res = Result{Target: res.Target, At: start, Latency: res.Latency, SystemIdentifier: res.SystemIdentifier}
		res.Err = err
		res.ErrorClass = Classify(err)
		return res
	}
	res.Reachable = true
	return res
}

func (p *Prober) probe(ctx context.Context, t Target, res *Result) error {
	if err := t.Validate(); err != nil {
		return err
	}
	var s *slot
	for {
		var err error
		if s, err = p.slot(t.Key()); err != nil {
			return err
		}
		select {
		case s.sem <- struct{}{}:
		case <-ctx.Done():
			return fmt.Errorf("probe: %s: the previous probe of this node is still waiting for the server: %w", t, ctx.Err())
		}
		if !s.gone {
			break
		}
		<-s.sem // forgotten meanwhile: take the new slot
	}
	// The slot is held; the work below releases it when it ends, which may
	// be after this probe has returned (see Prober).
	fp := t.fingerprint()
	if s.conn != nil && (s.params != fp || s.conn.IsClosed()) {
		closeNow(s.conn)
		s.conn = nil
	}
	if s.conn == nil && time.Now().Before(s.nextConnect) {
		err := s.connectErr
		<-s.sem
		return fmt.Errorf("%w (%d failed connection attempts in a row; the next in %v)", err, s.failures,
			time.Until(s.nextConnect).Round(time.Millisecond))
	}
	out := Result{Target: res.Target, At: res.At}
	done := make(chan error, 1)
	go func() {
		defer func() { <-s.sem }()
		done <- p.work(ctx, s, t, fp, &out)
	}()
	select {
	case err := <-done:
		if err != nil {
			return err
		}
	case <-ctx.Done():
		return fmt.Errorf("probe: %s did not answer within %v: %w", t, p.timeout, ctx.Err())
	}
	*res = out
	if t.ExpectedSystemID != 0 && res.SystemIdentifier != t.ExpectedSystemID {
		// Not the node we mean: do not keep talking to it.
		if p.acquire(ctx, s) {
			closeNow(s.conn)
			s.conn = nil
			<-s.sem
		}
		return fmt.Errorf("%w: %s answered with system identifier %d, expected %d; is the address pointing at the wrong server?",
			ErrWrongSystem, t, res.SystemIdentifier, t.ExpectedSystemID)
	}
	return nil
}

// acquire takes s's semaphore, giving up when ctx ends.
func (p *Prober) acquire(ctx context.Context, s *slot) bool {
	select {
	case s.sem <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

// work runs with s's semaphore held: it connects when needed (for up to
// connectTimeout, whatever ctx says) and then queries under ctx, retrying
// once on a fresh connection when a kept one fails.
func (p *Prober) work(ctx context.Context, s *slot, t Target, fp string, res *Result) error {
	reused := s.conn != nil
	if err := p.connect(s, t, fp); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		// Connected after the probe gave up: the next probe uses it.
		return err
	}
	err := p.query(ctx, s, t, res)
	if err != nil && ctx.Err() == nil && ((reused && s.conn == nil) || lateCancel(err)) {
		// A broken kept connection, or the cancel request of an earlier
		// timed-out probe that reached the server late: try once more.
		p.log.Debug("probe: kept connection failed, retrying", "target", t, "err", err)
		*res = Result{Target: res.Target, At: res.At}
		if err := p.connect(s, t, fp); err != nil {
			return err
		}
		err = p.query(ctx, s, t, res)
	}
	return err
}

// lateCancel reports whether err is PostgreSQL's query_canceled (57014).
func lateCancel(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "57014"
}

// connect opens s's connection if it has none, bounded by connectTimeout
// and not by any probe's deadline, and records failures for the backoff.
func (p *Prober) connect(s *slot, t Target, fp string) error {
	if s.conn != nil {
		return nil
	}
	cfg, err := pgx.ParseConfig(t.connString(p.appName))
	if err != nil {
		return fmt.Errorf("probe: %s: bad connection settings: %w", t, err)
	}
	// The probe query is prepared once per connection and then runs in one round trip
	// (Bind/Execute/Sync): parsing and planning it every time cost PostgreSQL five times more.
	cfg.DefaultQueryExecMode = pgx.QueryExecModeCacheStatement
	cfg.ConnectTimeout = p.connectTimeout
	// A query whose probe timed out is cancelled with a cancel request, and
	// the connection is only torn down if the server does not react within
	// connectTimeout: a busy server keeps its probe connection.
	cfg.BuildContextWatcherHandler = func(c *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: c, DeadlineDelay: p.connectTimeout}
	}
	cctx, cancel := context.WithTimeout(s.ctx, p.connectTimeout)
	defer cancel()
	c, err := pgx.ConnectConfig(cctx, cfg)
	if err != nil {
		err = fmt.Errorf("probe: connecting to %s: %w", t, err)
		s.failures++
		s.connectErr = err
		s.nextConnect = time.Now().Add(backoff(s.failures))
		return err
	}
	s.failures, s.connectErr, s.nextConnect = 0, nil, time.Time{}
	s.conn, s.params, s.major, s.guarded = c, fp, serverMajor(c), false
	p.log.Debug("probe: connected", "target", t, "server_major", s.major)
	return nil
}

// backoff is the wait before the next connection attempt after failures
// failed ones in a row: none after the first, then doubling, with jitter.
func backoff(failures int) time.Duration {
	if failures <= 1 {
		return 0
	}
	d := backoffBase << min(failures-2, 10)
	d = min(d, backoffMax)
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

// query runs the probe query on s's connection. A failure that broke the
// connection drops it; a query cancelled on time (the server answered the
// cancel request) keeps it.
func (p *Prober) query(ctx context.Context, s *slot, t Target, res *Result) error {
	err := p.queryOnce(ctx, s, t, res)
	if err != nil && !s.guarded && s.conn != nil && heartbeatUnreadable(err) {
		// No regent.heartbeat here yet (a new cluster, a standby before it replicated), or no
		// right to read it: read it the guarded way from now on.
		s.guarded = true
		err = p.queryOnce(ctx, s, t, res)
	}
	if err == nil && s.guarded && !res.HeartbeatAt.IsZero() {
		s.guarded = false // the table is there and readable: the plain form next time
	}
	return err
}

// heartbeatUnreadable reports whether err is the plain heartbeat read failing: the table (or
// schema) does not exist, or the user may not read it.
func heartbeatUnreadable(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "42P01" || pe.Code == "3F000" || pe.Code == "42501")
}

// queryOnce runs the probe query once in the form the slot calls for.
func (p *Prober) queryOnce(ctx context.Context, s *slot, t Target, res *Result) error {
	v, h := 0, 0
	if s.major != 0 && s.major < 14 {
		v = 1
	}
	if s.guarded {
		h = 1
	}
	q := probeQueries[v][h]
	var (
		cur, rec, rep        *string
		sysid, tli, sendPort int64
		replayTS, beatTS     *time.Time
	)
	err := s.conn.QueryRow(ctx, q, t.Cluster).Scan(&res.InRecovery, &cur, &rec, &rep, &sysid, &tli,
		&res.WalReceiverStatus, &res.SenderHost, &sendPort, &res.ReplayPaused, &replayTS, &beatTS)
	if err != nil {
		if s.conn.IsClosed() {
			s.conn = nil
		}
		return fmt.Errorf("probe: querying %s: %w", t, err)
	}
	res.SystemIdentifier = uint64(sysid)
	res.Timeline = uint32(tli)
	res.SenderPort = uint16(sendPort)
	if replayTS != nil {
		res.LastReplayTimestamp = *replayTS
	}
	if beatTS != nil {
		res.HeartbeatAt = *beatTS
	}
	var errs []error
	var e error
	res.CurrentLSN, e = parseNullLSN(cur)
	errs = append(errs, e)
	res.ReceivedLSN, e = parseNullLSN(rec)
	errs = append(errs, e)
	res.ReplayLSN, e = parseNullLSN(rep)
	errs = append(errs, e)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("probe: %s answered with %w", t, err)
	}
	return nil
}

// serverMajor returns the server's major version from its server_version
// parameter ("15.4 (Debian ...)" → 15), or 0 when unknown.
func serverMajor(c *pgx.Conn) int {
	v := c.PgConn().ParameterStatus("server_version")
	end := strings.IndexFunc(v, func(r rune) bool { return r < '0' || r > '9' })
	if end >= 0 {
		v = v[:end]
	}
	n, _ := strconv.Atoi(v)
	return n
}

// closeNow closes a connection without waiting for the server: its
// context is already done, so a hung server cannot delay it.
func closeNow(c *pgx.Conn) {
	if c == nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = c.Close(ctx)
}

func (p *Prober) slot(key string) (*slot, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, ErrClosed
	}
	s := p.slots[key]
	if s == nil {
		s = &slot{sem: make(chan struct{}, 1)}
		s.ctx, s.cancel = context.WithCancel(context.Background())
		p.slots[key] = s
	}
	return s, nil
}

// Forget closes the kept connection of the target with key (see
// Target.Key) and forgets it; a later Probe of that target connects anew.
// It stops a connection attempt in progress and waits for a query in
// progress to end (at most ConnectTimeout after its probe's deadline).
func (p *Prober) Forget(key string) {
	p.mu.Lock()
	s := p.slots[key]
	delete(p.slots, key)
	p.mu.Unlock()
	if s != nil {
		s.cancel()
		s.sem <- struct{}{}
		s.gone = true
		closeNow(s.conn)
		s.conn = nil
		<-s.sem
	}
}

// Close closes every kept connection, waiting for probes in progress to
// finish. Probes after Close fail with ErrClosed.
func (p *Prober) Close() error {
	p.mu.Lock()
	p.closed = true
	keys := make([]string, 0, len(p.slots))
	for k := range p.slots {
		keys = append(keys, k)
	}
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, k := range keys {
		wg.Go(func() { p.Forget(k) })
	}
	wg.Wait()
	return nil
}

// ProbeAll probes every target concurrently, each in its own goroutine,
// and returns the results in the order of targets. It takes about as long
// as the slowest probe, at most the Prober's timeout.
func (p *Prober) ProbeAll(ctx context.Context, targets []Target) []Result {
	out := make([]Result, len(targets))
	var wg sync.WaitGroup
	for i, t := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = p.Probe(ctx, t)
		}()
	}
	wg.Wait()
	return out
}
