package pgtest

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// LoadTable is the table WriteLoad inserts into; it is created on demand.
const LoadTable = "regent_load"

// Load is a running write load started by Server.WriteLoad.
type Load struct {
	stop     chan struct{}
	stopOnce sync.Once
	done     chan struct{}

	mu        sync.Mutex
	acked     []int64
	failed    int
	uncertain int
	lastErr   error
}

// LoadStats summarises a Load.
type LoadStats struct {
	// Acked is the number of inserts whose commit the server acknowledged.
	Acked int
	// Failed is the number of inserts or connection attempts that
	// returned an error.
	Failed int
	// Uncertain counts inserts sent whose outcome is unknown: the
	// connection broke before the answer came, so the row may or may not
	// have been committed. It is included in Failed.
	Uncertain int
	// LastErr is the most recent error, or nil.
	LastErr error
}

// WriteLoad starts inserting rows into LoadTable on the server (which must be
// a primary), one row per transaction, at about rate rows per second (as
// fast as possible when rate <= 0), until ctx ends or Stop is called. It
// records the id of every row whose commit was acknowledged. Errors do not
// stop it: it reconnects and carries on, so it can run across a crash or a
// failover of this server. Stop it (or end ctx) before closing the bench,
// or it keeps trying to reconnect.
func (s *Server) WriteLoad(ctx context.Context, rate float64) (*Load, error) {
	if err := s.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+LoadTable+` (
		id bigserial PRIMARY KEY,
		at timestamptz NOT NULL DEFAULT clock_timestamp(),
		payload text)`); err != nil {
		return nil, fmt.Errorf("pgtest: preparing the write load on %s (is it a primary?): %w", s, err)
	}
	l := &Load{stop: make(chan struct{}), done: make(chan struct{})}
	go l.run(ctx, s, rate)
	return l, nil
}

func (l *Load) run(ctx context.Context, s *Server, rate float64) {
	defer close(l.done)
	var tick <-chan time.Time
	if rate > 0 {
		t := time.NewTicker(time.Duration(float64(time.Second) / rate))
		defer t.Stop()
		tick = t.C
	}
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	backoff := time.NewTimer(0)
	defer backoff.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.stop:
			return
		default:
		}
		if tick != nil {
			select {
			case <-ctx.Done():
				return
			case <-l.stop:
				return
			case <-tick:
			}
		}
		if conn == nil {
			// After a failure wait a little before reconnecting, so a
			// load at full speed does not spin against a dead server.
			select {
			case <-ctx.Done():
				return
			case <-l.stop:
				return
			case <-backoff.C:
			}
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			c, err := s.Connect(cctx)
			cancel()
			if err != nil {
				l.fail(err, false)
				backoff.Reset(20 * time.Millisecond)
				continue
			}
			conn = c
		}
		var id int64
		err := conn.QueryRow(ctx, `INSERT INTO `+LoadTable+` (payload) VALUES ('x') RETURNING id`).Scan(&id)
		if err != nil {
			l.fail(err, true)
			if ctx.Err() != nil {
				return // ctx ended mid-insert: its outcome is unknown
			}
			conn.Close(context.Background())
			conn = nil
			backoff.Reset(20 * time.Millisecond)
			continue
		}
		l.mu.Lock()
		l.acked = append(l.acked, id)
		l.mu.Unlock()
	}
}

func (l *Load) fail(err error, uncertain bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.failed++
	if uncertain {
		l.uncertain++
	}
	l.lastErr = err
}

// Stop stops the load after the insert in flight (if any) has finished,
// and returns the final statistics. (Ending the ctx given to WriteLoad
// instead interrupts that insert, whose outcome is then uncertain.)
func (l *Load) Stop() LoadStats {
	l.stopOnce.Do(func() { close(l.stop) })
	<-l.done
	return l.Stats()
}

// Stats returns the statistics so far.
func (l *Load) Stats() LoadStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	return LoadStats{Acked: len(l.acked), Failed: l.failed, Uncertain: l.uncertain, LastErr: l.lastErr}
}

// Acked returns the ids of the rows acknowledged so far, in commit order.
func (l *Load) Acked() []int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]int64(nil), l.acked...)
}

// WaitAcked waits until at least n rows have been acknowledged in total.
func (l *Load) WaitAcked(ctx context.Context, n int) error {
	err := WaitFor(ctx, func(context.Context) (bool, error) {
		st := l.Stats()
		select {
		case <-l.done:
			return st.Acked >= n, fmt.Errorf("the load has stopped after %d rows", st.Acked)
		default:
		}
		return st.Acked >= n, st.LastErr
	})
	if err != nil {
		return fmt.Errorf("pgtest: waiting for %d acknowledged rows: %w", n, err)
	}
	return nil
}
