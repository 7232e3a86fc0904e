package fencing

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/regentdb/regent/hook"
	"github.com/regentdb/regent/pgtest"
)

func target(b *pgtest.Bench, s *pgtest.Server) Target {
	return Target{Host: s.Host, Port: uint16(s.Port), User: pgtest.SuperUser, Database: "postgres",
		Password: b.Password(), SSLMode: "disable", Node: s.Name, Cluster: "orders"}
}

func sqlState(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// insert runs a plain INSERT in a new session.
func insert(ctx context.Context, s *pgtest.Server) error {
	c, err := s.Connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	_, err = c.Exec(ctx, "INSERT INTO fence_t (v) VALUES ('new session')")
	return err
}

// writer is a client session that inserts one row per transaction until its session ends. A
// read-only refusal (25006) does not stop it: it keeps trying on the same session.
type writer struct {
	pid  uint32
	mu   sync.Mutex
	n    int
	err  error
	done chan struct{}
}

func startWriter(t *testing.T, ctx context.Context, s *pgtest.Server) *writer {
	t.Helper()
	c, err := s.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w := &writer{pid: c.PgConn().PID(), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		defer c.Close(context.Background())
		for ctx.Err() == nil {
			_, err := c.Exec(ctx, "INSERT INTO fence_t (v) VALUES ('writer')")
			w.mu.Lock()
			if err != nil && sqlState(err) != "25006" {
				w.err = err
				w.mu.Unlock()
				return
			}
			if err != nil {
				w.mu.Unlock()
				continue
			}
			w.n++
			w.mu.Unlock()
		}
	}()
	return w
}

func (w *writer) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.n
}

func TestSQLFenceOnRealServers(t *testing.T) {
	b := pgtest.Start(t, pgtest.Options{Standbys: 1, PasswordAuth: true})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	primary, standby := b.Primary, b.Standbys[0]
	tp, ts := target(b, primary), target(b, standby)
	if err := primary.Exec(ctx, "CREATE TABLE fence_t (id bigserial PRIMARY KEY, v text)"); err != nil {
		t.Fatal(err)
	}

	// A session that keeps writing, and one with an open, uncommitted write.
	w := startWriter(t, ctx, primary)
	if err := pgtest.WaitFor(ctx, func(context.Context) (bool, error) { return w.count() > 0, nil }); err != nil {
		t.Fatalf("the writer never wrote: %v", err)
	}
	open, err := primary.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close(context.Background())
	tx, err := open.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO fence_t (v) VALUES ('uncommitted')"); err != nil {
		t.Fatal(err)
	}

	t.Run("fence", func(t *testing.T) {
		if err := FenceSQL(ctx, tp); err != nil {
			t.Fatalf("FenceSQL: %v", err)
		}
		// FenceSQL returns once the sessions it terminated have exited.
		var n int
		if err := primary.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", w.pid).Scan(&n); err != nil || n != 0 {
			t.Errorf("the writing session (pid %d) is still there after FenceSQL (%d, %v)", w.pid, n, err)
		}
		select {
		case <-w.done:
		case <-ctx.Done():
			t.Fatal("the writing session was not stopped")
		}
		// Terminated: 57P01 (admin_shutdown), or the connection broke before the message was read.
		t.Logf("the writer stopped with: %v", w.err)
		if code := sqlState(w.err); code != "57P01" && code != "" {
			t.Errorf("the writer stopped with %v, want its session terminated", w.err)
		}
		if err := tx.Commit(ctx); err == nil {
			t.Error("the open transaction committed after the fence")
		}
		if err := insert(ctx, primary); sqlState(err) != "25006" {
			t.Errorf("plain INSERT in a new session: %v, want SQLSTATE 25006", err)
		}
		if err := primary.QueryRow(ctx, "SELECT count(*) FROM fence_t WHERE v = 'uncommitted'").Scan(&n); err != nil || n != 0 {
			t.Errorf("uncommitted row count %d (%v), want 0", n, err)
		}
	})

	t.Run("limit: an explicit READ WRITE transaction still writes", func(t *testing.T) {
		// Documented limit of the SQL fence; the keeper is what makes fencing hard.
		if err := primary.Exec(ctx, "BEGIN READ WRITE; INSERT INTO fence_t (v) VALUES ('explicit rw'); COMMIT"); err != nil {
			t.Errorf("explicit READ WRITE after the fence: %v (if this now fails, update the package doc)", err)
		}
	})

	t.Run("idempotent", func(t *testing.T) {
		if err := FenceSQL(ctx, tp); err != nil {
			t.Fatalf("second FenceSQL: %v", err)
		}
		out := Fence(ctx, []string{"bogus", "sql"}, tp, hook.Command{})
		if out.Method != "sql" || !out.Fenced() || len(out.Attempts) != 2 || !strings.Contains(out.Attempts[0].Err, "unknown fence method") || out.Attempts[1].Err != "" {
			t.Errorf("Fence(bogus, sql) = %+v", out)
		}
	})

	t.Run("standby", func(t *testing.T) {
		if err := FenceSQL(ctx, ts); err != nil {
			t.Fatalf("FenceSQL on a standby: %v", err)
		}
		out := Fence(ctx, nil, ts, hook.Command{})
		if out.Method != "sql" || !strings.Contains(out.Attempts[0].Output, "recovery") {
			t.Errorf("Fence on a standby = %+v", out)
		}
		// Nothing was changed on the standby.
		var v string
		if err := standby.QueryRow(ctx, "SHOW default_transaction_read_only").Scan(&v); err != nil || v != "off" {
			t.Errorf("standby default_transaction_read_only = %q (%v), want off", v, err)
		}
	})

	t.Run("unfence", func(t *testing.T) {
		if err := UnfenceSQL(ctx, tp); err != nil {
			t.Fatalf("UnfenceSQL: %v", err)
		}
		if err := insert(ctx, primary); err != nil {
			t.Errorf("INSERT after UnfenceSQL: %v", err)
		}
		if err := UnfenceSQL(ctx, tp); err != nil {
			t.Errorf("second UnfenceSQL: %v", err)
		}
		if err := standby.WaitCaughtUp(ctx, primary); err != nil {
			t.Errorf("standby stopped following: %v", err)
		}
	})

	if err := primary.Kill9(); err != nil {
		t.Fatal(err)
	}

	t.Run("down", func(t *testing.T) {
		dctx, dcancel := context.WithTimeout(ctx, 20*time.Second)
		defer dcancel()
		err := FenceSQL(dctx, tp)
		if err == nil {
			t.Fatal("FenceSQL on a killed server succeeded")
		}
		if dctx.Err() != nil {
			t.Errorf("FenceSQL on a refusing server took until the deadline: %v", err)
		}
		t.Logf("error: %v", err)
		msg := err.Error()
		if !strings.Contains(msg, "primary") || !strings.Contains(msg, "fence it another way") {
			t.Errorf("error does not name the node or say what to do: %q", msg)
		}
		if strings.Contains(msg, b.Password()) {
			t.Errorf("error leaks the password: %q", msg)
		}
	})

	t.Run("sql fails, command holds", func(t *testing.T) {
		cmd := hook.Command{Shell: `echo "fencing $REGENT_NODE"`, Env: map[string]string{"REGENT_NODE": "primary"}, Timeout: 10 * time.Second}
		out := Fence(ctx, []string{"sql", "command"}, tp, cmd)
		if out.Method != "command" || len(out.Attempts) != 2 {
			t.Fatalf("Fence = %+v", out)
		}
		if out.Attempts[0].Method != "sql" || out.Attempts[0].Err == "" {
			t.Errorf("sql attempt %+v", out.Attempts[0])
		}
		if a := out.Attempts[1]; a.Method != "command" || a.Err != "" || a.Output != "fencing primary\n" {
			t.Errorf("command attempt %+v", a)
		}
	})

	t.Run("both fail", func(t *testing.T) {
		cmd := hook.Command{Shell: "echo cannot reach the PDU; exit 2", Timeout: 10 * time.Second}
		out := Fence(ctx, []string{"sql", "command"}, tp, cmd)
		if out.Method != "" || out.Fenced() || len(out.Attempts) != 2 {
			t.Fatalf("Fence = %+v", out)
		}
		if a := out.Attempts[1]; !strings.Contains(a.Err, "code 2") || a.Output != "cannot reach the PDU\n" {
			t.Errorf("command attempt %+v", a)
		}
		for _, a := range out.Attempts {
			t.Logf("attempt %s: %s", a.Method, a.Err)
			if a.Err == "" || strings.Contains(a.Err, b.Password()) {
				t.Errorf("attempt %+v: want an error without the password", a)
			}
		}
	})
}

func TestSQLFenceOfHungServerBoundedByContext(t *testing.T) {
	bh := pgtest.StartBlackHole(t)
	tgt := Target{Host: bh.Host(), Port: uint16(bh.Port()), User: "regent", Password: "s3cret-pw", Node: "old", Cluster: "orders"}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err := FenceSQL(ctx, tgt)
	if err == nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("FenceSQL on a server that never answers: %v, want a deadline error", err)
	}
	if strings.Contains(err.Error(), "s3cret-pw") {
		t.Errorf("error leaks the password: %q", err)
	}
}

func TestFenceKeepsTimeForCommandAfterHungSQL(t *testing.T) {
	bh := pgtest.StartBlackHole(t)
	tgt := Target{Host: bh.Host(), Port: uint16(bh.Port()), User: "regent", Node: "old"}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	out := Fence(ctx, []string{"sql", "command"}, tgt, hook.Command{Shell: "exit 0", Timeout: 300 * time.Millisecond})
	if out.Method != "command" {
		t.Fatalf("Fence = %+v: the hung SQL attempt used up the command's time", out)
	}
	if !strings.Contains(out.Attempts[0].Err, "deadline") {
		t.Errorf("sql attempt %+v", out.Attempts[0])
	}
}

func TestFenceCommandErrors(t *testing.T) {
	if _, err := FenceCommand(context.Background(), hook.Command{}); !errors.Is(err, ErrNoCommand) {
		t.Errorf("empty command: %v", err)
	}
	r, err := FenceCommand(context.Background(), hook.Command{Shell: "sleep 60", Timeout: 50 * time.Millisecond})
	if !errors.Is(err, ErrCommandFailed) || !errors.Is(err, hook.ErrTimeout) || r.OK() {
		t.Errorf("timed-out command: %v %+v", err, r)
	}
	out := Fence(context.Background(), []string{"command"}, Target{}, hook.Command{})
	if out.Fenced() || len(out.Attempts) != 1 || !strings.Contains(out.Attempts[0].Err, "fence_command") {
		t.Errorf("Fence(command) without a command = %+v", out)
	}
}

func TestSQLContextBudget(t *testing.T) {
	cmd := hook.Command{Shell: "true", Timeout: 2 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dl, _ := ctx.Deadline()
	for _, tc := range []struct {
		name string
		rest []string
		cmd  hook.Command
		want time.Duration // how much earlier than ctx's deadline
	}{
		{"no command after", nil, cmd, 0},
		{"command after", []string{"command"}, cmd, 2 * time.Second},
		{"command without a shell", []string{"command"}, hook.Command{}, 0},
		{"default command timeout", []string{"command"}, hook.Command{Shell: "true"}, hook.DefaultTimeout / 2}, // 10s > half: split
	} {
		sctx, scancel := sqlContext(ctx, tc.rest, tc.cmd)
		got, _ := sctx.Deadline()
		scancel()
		if d := dl.Sub(got); d < tc.want-time.Second || d > tc.want+time.Second {
			t.Errorf("%s: SQL deadline %v before ctx's, want about %v", tc.name, d, tc.want)
		}
	}
	sctx, scancel := sqlContext(context.Background(), nil, cmd)
	defer scancel()
	if _, ok := sctx.Deadline(); !ok {
		t.Error("no deadline without a ctx deadline")
	}
}
