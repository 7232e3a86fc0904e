package e2e

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/regentdb/regent/pgconnect"
	"github.com/regentdb/regent/pgtest"
)

// writesTable has one row per acknowledged transaction: which writer, on which node, its id
// (in public: the regent role's search path finds its own schema, regent, first).
const writesTable = "public.e2e_writes"

const createWritesTable = `CREATE TABLE ` + writesTable + ` (writer text NOT NULL, node text NOT NULL,
	id bigint NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp(), PRIMARY KEY (writer, id))`

// writeEvery paces each writer: steady load without starving a two-core machine.
const writeEvery = 20 * time.Millisecond

// ack is one acknowledged write. The commit happened somewhere in [sent, at], both read from
// this process's monotonic clock.
type ack struct {
	writer, node string
	id           int64
	sent, at     time.Time
}

// refusal is a write that was not acknowledged: refused, failed or timed out.
type refusal struct {
	writer, node string
	at           time.Time
	// kind is "read-only" (SQLSTATE 25006), "terminated" (57P01, the fence ends sessions),
	// "connect" (no session: refused, reset or timed out) or "error" (anything else).
	kind string
	err  string
}

// ledger records every write attempt of every writer.
type ledger struct {
	mu       sync.Mutex
	acks     []ack
	refusals []refusal
}

func (l *ledger) ack(a ack) {
	l.mu.Lock()
	l.acks = append(l.acks, a)
	l.mu.Unlock()
}

func (l *ledger) refuse(r refusal) {
	l.mu.Lock()
	l.refusals = append(l.refusals, r)
	l.mu.Unlock()
}

// snapshot returns copies of the acks and refusals so far.
func (l *ledger) snapshot() ([]ack, []refusal) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]ack(nil), l.acks...), append([]refusal(nil), l.refusals...)
}

// span is the time a node acknowledged writes in: from the first write's send to the last
// write's acknowledgement.
type span struct {
	node        string
	first, last ack
	n           int
}

// spans returns each node's span, earliest first.
func spans(acks []ack) []span {
	by := map[string]*span{}
	for _, a := range acks {
		s := by[a.node]
		if s == nil {
			s = &span{node: a.node, first: a, last: a}
			by[a.node] = s
		}
		if a.sent.Before(s.first.sent) {
			s.first = a
		}
		if a.at.After(s.last.at) {
			s.last = a
		}
		s.n++
	}
	var out []span
	for _, s := range by {
		out = append(out, *s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].first.sent.Before(out[j].first.sent) })
	return out
}

// overlaps describes every pair of nodes whose spans overlap: two nodes that may both have
// committed writes at one moment (empty: none).
func overlaps(acks []ack) []string {
	ss := spans(acks)
	var out []string
	for i := range ss {
		for j := i + 1; j < len(ss); j++ {
			a, b := ss[i], ss[j]
			if b.first.sent.Before(a.last.at) {
				out = append(out, fmt.Sprintf("%s acknowledged %s/%d (sent %v) before %s acknowledged its last write %s/%d (at %v)",
					b.node, b.first.writer, b.first.id, b.first.sent.Format(time.StampMicro),
					a.node, a.last.writer, a.last.id, a.last.at.Format(time.StampMicro)))
			}
		}
	}
	return out
}

// writer commits one row per transaction, each writeEvery, until stopped: to the node that
// route names, through a session it keeps until the node changes or a write fails.
type writer struct {
	name  string
	l     *ledger
	route func(ctx context.Context) (node string, t pgconnect.Target, ok bool)
	stop  context.CancelFunc
	done  chan struct{}
}

// startWriter starts a writer; it is stopped when the test ends at the latest.
func startWriter(t *testing.T, name string, l *ledger, route func(ctx context.Context) (string, pgconnect.Target, bool)) *writer {
	ctx, cancel := context.WithCancel(context.Background())
	w := &writer{name: name, l: l, route: route, stop: cancel, done: make(chan struct{})}
	go w.run(ctx)
	t.Cleanup(w.Stop)
	return w
}

// Stop ends the writer and waits for it.
func (w *writer) Stop() {
	w.stop()
	<-w.done
}

func (w *writer) run(ctx context.Context) {
	defer close(w.done)
	tick := time.NewTicker(writeEvery)
	defer tick.Stop()
	var (
		conn     *pgx.Conn
		connNode string
		id       int64
	)
	defer func() {
		if conn != nil {
			pgconnect.Close(conn)
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		node, target, ok := w.route(ctx)
		if !ok {
			continue
		}
		if conn != nil && connNode != node {
			pgconnect.Close(conn)
			conn = nil
		}
		id++
		sent := time.Now()
		if conn == nil {
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			c, err := pgconnect.Connect(cctx, target, "e2e-"+w.name)
			cancel()
			if err != nil {
				if ctx.Err() == nil {
					w.l.refuse(refusal{writer: w.name, node: node, at: time.Now(), kind: "connect", err: err.Error()})
				}
				continue
			}
			conn, connNode = c, node
		}
		wctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := conn.Exec(wctx, `INSERT INTO `+writesTable+` (writer, node, id) VALUES ($1, $2, $3)`, w.name, node, id)
		cancel()
		at := time.Now()
		if err == nil {
			w.l.ack(ack{writer: w.name, node: node, id: id, sent: sent, at: at})
			continue
		}
		if ctx.Err() != nil {
			return
		}
		w.l.refuse(refusal{writer: w.name, node: node, at: at, kind: classify(err), err: err.Error()})
		pgconnect.Close(conn)
		conn = nil
	}
}

// classify names why a write failed (see refusal.kind).
func classify(err error) string {
	var pe *pgconn.PgError
	switch {
	case errors.As(err, &pe) && pe.Code == "25006":
		return "read-only"
	case errors.As(err, &pe) && pe.Code == "57P01":
		return "terminated"
	case errors.As(err, &pe):
		return "error"
	}
	return "connect"
}

// refusalKinds counts the refusals by writer, node and kind, for the test log.
func refusalKinds(rs []refusal) string {
	n := map[string]int{}
	for _, r := range rs {
		n[r.writer+"@"+r.node+" "+r.kind]++
	}
	var keys []string
	for k := range n {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s ×%d; ", k, n[k])
	}
	return b.String()
}

// missingAcks returns the acknowledged ids of a writer on node that s does not hold.
func missingAcks(ctx context.Context, s *pgtest.Server, acks []ack, writer, node string) ([]int64, error) {
	rows, err := s.Query(ctx, `SELECT id FROM `+writesTable+` WHERE writer = $1 AND node = $2`, writer, node)
	if err != nil {
		return nil, fmt.Errorf("read %s's rows on %s: %w", writer, s, err)
	}
	have := map[int64]bool{}
	for _, r := range rows {
		have[r[0].(int64)] = true
	}
	var missing []int64
	for _, a := range acks {
		if a.writer == writer && a.node == node && !have[a.id] {
			missing = append(missing, a.id)
		}
	}
	return missing, nil
}

// TestOverlaps checks the checker the end-to-end tests rely on.
func TestOverlaps(t *testing.T) {
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	w := func(node string, sent, acked int) ack {
		return ack{writer: "w", node: node, sent: at(sent), at: at(acked)}
	}
	cases := []struct {
		name string
		acks []ack
		want int
	}{
		{"one node", []ack{w("a", 0, 5), w("a", 3, 9), w("a", 10, 12)}, 0},
		{"handover", []ack{w("a", 0, 5), w("a", 6, 9), w("b", 10, 12), w("b", 13, 14)}, 0},
		{"commit windows touch", []ack{w("a", 0, 5), w("b", 4, 8)}, 1},
		{"old primary acks late", []ack{w("a", 0, 5), w("b", 10, 12), w("a", 20, 21)}, 1},
		{"out of order input", []ack{w("b", 10, 12), w("a", 0, 5)}, 0},
		{"three nodes, two overlap", []ack{w("a", 0, 5), w("b", 10, 12), w("c", 11, 20)}, 1},
	}
	for _, c := range cases {
		if got := overlaps(c.acks); len(got) != c.want {
			t.Errorf("%s: %d overlaps %q, want %d", c.name, len(got), got, c.want)
		}
	}
}
