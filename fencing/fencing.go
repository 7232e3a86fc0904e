// Package fencing makes an old primary stop taking writes before a standby is promoted: by SQL
// on a node that still answers (FenceSQL), by the operator's fence command (FenceCommand), or by
// trying the cluster's fence methods in order (Fence).
//
// # What the SQL fence does and does not do
//
// FenceSQL sets default_transaction_read_only = on with ALTER SYSTEM, reloads the configuration,
// waits until new sessions get the setting, terminates every client session but its own, and
// then confirms from a new session that a write in a plain transaction fails with SQLSTATE 25006
// (read_only_sql_transaction). Sessions that were writing lose their connection and their open
// transactions roll back; new sessions start read-only.
//
// default_transaction_read_only is only a default. A client that asks explicitly for a
// read-write transaction (BEGIN READ WRITE, SET TRANSACTION READ WRITE) or sets the parameter
// off in its session can still write. The SQL fence is the most a witness can do over a
// PostgreSQL connection; the keeper beside each server makes fencing hard (it can stop the
// server). WAL senders are not terminated, so standbys still receive the old primary's last WAL.
//
// A node in recovery (a standby) is not writable, so FenceSQL returns nil for it without
// changing anything; Fence notes that in the attempt's output.
package fencing

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/regentdb/regent/hook"
	"github.com/regentdb/regent/pgconnect"
)

// Target is the node to fence and how to log in to it (a superuser: ALTER SYSTEM and
// terminating other roles' sessions need one). It is pgconnect.Target; its password never
// appears in errors or String.
type Target = pgconnect.Target

// Method is a fence mechanism, as named in the cluster policy's fence_methods.
type Method string

// The fence methods.
const (
	// MethodSQL is FenceSQL on a reachable old primary.
	MethodSQL Method = "sql"
	// MethodCommand is the operator's fence_command (FenceCommand).
	MethodCommand Method = "command"
)

// DefaultMethods is what Fence tries when given no methods (the policy's default).
var DefaultMethods = []string{string(MethodSQL)}

// DefaultSQLTimeout bounds an SQL fence attempt made by Fence when ctx has no deadline.
const DefaultSQLTimeout = 30 * time.Second

// appName is the application_name of regent's fencing sessions.
const appName = "regent-fence"

// Errors; match them with errors.Is.
var (
	// ErrNotConfirmed: the fence's steps ran but a new session could still write (or did not see
	// default_transaction_read_only on), so the node is not known to be fenced.
	ErrNotConfirmed = errors.New("fencing: the SQL fence is not confirmed")
	// ErrCommandFailed: the fence command did not exit 0.
	ErrCommandFailed = errors.New("fencing: the fence command failed")
	// ErrNoCommand: method "command" was asked for but no fence command is configured.
	ErrNoCommand = errors.New("fencing: no fence command is configured")
	// ErrUnknownMethod: a method other than "sql" or "command".
	ErrUnknownMethod = errors.New("fencing: unknown fence method")
)

// readOnlySQLState is read_only_sql_transaction.
const readOnlySQLState = "25006"

// FenceSQL makes the reachable old primary t read-only for new transactions and terminates its
// client sessions, and returns nil only once a new session has confirmed that a write fails with
// SQLSTATE 25006. It is idempotent. A node in recovery is already not writable: FenceSQL returns
// nil for it and changes nothing. A node that cannot be reached fails as fast as the connection
// does (refused at once, or at ctx's deadline or pgconnect.ConnectTimeout when packets vanish).
// See the package documentation for what the SQL fence cannot stop.
func FenceSQL(ctx context.Context, t Target) error {
	_, err := fenceSQL(ctx, t)
	return err
}

// fenceSQL is FenceSQL, also returning a note on what it found.
func fenceSQL(ctx context.Context, t Target) (string, error) {
	c, err := pgconnect.Connect(ctx, t, appName)
	if err != nil {
		return "", fmt.Errorf("fencing %s by SQL: %w; if the node is down, fence it another way (fence command, keeper) or wait for its lease to lapse", t, err)
	}
	defer pgconnect.Close(c)

	var inRecovery bool
	if err := c.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil {
		return "", fmt.Errorf("fencing %s by SQL: asking whether it is in recovery: %w", t, err)
	}
	if inRecovery {
		return "in recovery (a standby): not writable, nothing to fence", nil
	}
	if _, err := c.Exec(ctx, "ALTER SYSTEM SET default_transaction_read_only = on"); err != nil {
		return "", fmt.Errorf("fencing %s by SQL: ALTER SYSTEM SET default_transaction_read_only = on: %w; the fencing role needs superuser (or ALTER SYSTEM on that parameter)", t, err)
	}
	if err := pgconnect.ReloadConf(ctx, c, t, appName); err != nil {
		return "", fmt.Errorf("fencing %s by SQL: %w", t, err)
	}
	// Sessions started from now on get the read-only default; end those started before.
	if err := terminateClients(ctx, c, t); err != nil {
		return "", err
	}
	if err := confirmReadOnly(ctx, t); err != nil {
		return "", err
	}
	return "read-only for new transactions, client sessions terminated, write refused (25006)", nil
}

// terminateClients terminates every client backend but c's own and waits until they are gone.
// Listing and terminating are two statements so that the planner cannot call
// pg_terminate_backend before the filter that spares c's own session.
func terminateClients(ctx context.Context, c *pgx.Conn, t Target) error {
	rows, err := c.Query(ctx, `SELECT pid, backend_start FROM pg_stat_activity
		WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()`)
	if err != nil {
		return fmt.Errorf("fencing %s by SQL: listing client sessions: %w; the fencing role needs superuser (or pg_read_all_stats) to see every session", t, err)
	}
	var pids []int32
	var starts []time.Time
	for rows.Next() {
		var pid int32
		var start time.Time
		if err := rows.Scan(&pid, &start); err != nil {
			rows.Close()
			return fmt.Errorf("fencing %s by SQL: reading the client sessions: %w", t, err)
		}
		pids, starts = append(pids, pid), append(starts, start)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("fencing %s by SQL: listing client sessions: %w", t, err)
	}
	if len(pids) == 0 {
		return nil
	}
	// A pid that already exited makes pg_terminate_backend warn and return false: fine.
	if _, err := c.Exec(ctx, "SELECT pg_terminate_backend(p) FROM unnest($1::int[]) AS p", pids); err != nil {
		return fmt.Errorf("fencing %s by SQL: terminating client sessions: %w; the fencing role needs superuser to end every role's sessions", t, err)
	}
	var left int
	err = pgconnect.Poll(ctx, func(ctx context.Context) (bool, error) {
		// (pid, backend_start) so that a new session reusing a pid is not waited for.
		err := c.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity a
			JOIN unnest($1::int[], $2::timestamptz[]) AS t(pid, start) ON a.pid = t.pid AND a.backend_start = t.start`,
			pids, starts).Scan(&left)
		if err != nil {
			return false, err
		}
		return left == 0, nil
	})
	if err != nil {
		return fmt.Errorf("fencing %s by SQL: %d of %d terminated client sessions have not exited: %w", t, left, len(pids), err)
	}
	return nil
}

// confirmReadOnly checks from a new session that default_transaction_read_only is on and that a
// write in a plain transaction fails with 25006. The probe write is CREATE TEMP TABLE in a
// transaction that is rolled back, so it leaves nothing behind even if it succeeded.
func confirmReadOnly(ctx context.Context, t Target) error {
	c, err := pgconnect.Connect(ctx, t, appName)
	if err != nil {
		return fmt.Errorf("fencing %s by SQL: connecting to confirm the fence: %w", t, err)
	}
	defer pgconnect.Close(c)
	var setting string
	if err := c.QueryRow(ctx, "SHOW default_transaction_read_only").Scan(&setting); err != nil {
		return fmt.Errorf("fencing %s by SQL: confirming: %w", t, err)
	}
	if setting != "on" {
		return fmt.Errorf("%w on %s: a new session has default_transaction_read_only = %s after the reload; an ALTER ROLE/DATABASE ... SET overrides it for this role or database — remove that override or fence another way", ErrNotConfirmed, t, setting)
	}
	tx, err := c.Begin(ctx)
	if err != nil {
		return fmt.Errorf("fencing %s by SQL: confirming: BEGIN: %w", t, err)
	}
	_, werr := tx.Exec(ctx, "CREATE TEMP TABLE regent_fence_probe ()")
	if err := tx.Rollback(ctx); err != nil && werr == nil {
		return fmt.Errorf("fencing %s by SQL: confirming: ROLLBACK: %w", t, err)
	}
	if werr == nil {
		return fmt.Errorf("%w on %s: a write in a new session succeeded despite default_transaction_read_only = on", ErrNotConfirmed, t)
	}
	var pe *pgconn.PgError
	if !errors.As(werr, &pe) || pe.Code != readOnlySQLState {
		return fmt.Errorf("%w on %s: the probe write failed, but not as read-only (want SQLSTATE %s): %w", ErrNotConfirmed, t, readOnlySQLState, werr)
	}
	return nil
}

// UnfenceSQL undoes FenceSQL: it resets default_transaction_read_only with ALTER SYSTEM RESET,
// reloads, and returns nil once a new session sees the parameter off. Use it when a switchover
// aborts, and on a candidate before promotion. It works on a standby too (ALTER SYSTEM writes
// postgresql.auto.conf, not WAL). If the parameter is still on after the reload, it is set
// somewhere regent does not own (postgresql.conf, ALTER ROLE/DATABASE ... SET) and UnfenceSQL
// says so.
func UnfenceSQL(ctx context.Context, t Target) error {
	c, err := pgconnect.Connect(ctx, t, appName)
	if err != nil {
		return fmt.Errorf("unfencing %s: %w; retry once the node answers", t, err)
	}
	defer pgconnect.Close(c)
	if _, err := c.Exec(ctx, "ALTER SYSTEM RESET default_transaction_read_only"); err != nil {
		return fmt.Errorf("unfencing %s: ALTER SYSTEM RESET default_transaction_read_only: %w; the role needs superuser (or ALTER SYSTEM on that parameter)", t, err)
	}
	if err := pgconnect.ReloadConf(ctx, c, t, appName); err != nil {
		return fmt.Errorf("unfencing %s: %w", t, err)
	}
	n, err := pgconnect.Connect(ctx, t, appName)
	if err != nil {
		return fmt.Errorf("unfencing %s: connecting to confirm: %w", t, err)
	}
	defer pgconnect.Close(n)
	var setting string
	if err := n.QueryRow(ctx, "SHOW default_transaction_read_only").Scan(&setting); err != nil {
		return fmt.Errorf("unfencing %s: confirming: %w", t, err)
	}
	if setting != "off" {
		return fmt.Errorf("unfencing %s: default_transaction_read_only is still %s for new sessions after ALTER SYSTEM RESET; it is set in postgresql.conf or by ALTER ROLE/DATABASE ... SET, which regent does not change", t, setting)
	}
	return nil
}

// FenceCommand runs the operator's fence command; exit 0 means fenced. It returns the command's
// result in both cases; the error wraps ErrCommandFailed (and the hook's error, if any).
func FenceCommand(ctx context.Context, cmd hook.Command) (hook.Result, error) {
	if cmd.Shell == "" {
		return hook.Result{ExitCode: -1}, fmt.Errorf("%w: set the cluster policy's fence_command or drop \"command\" from fence_methods", ErrNoCommand)
	}
	r := hook.Run(ctx, cmd)
	if r.Err != nil {
		return r, fmt.Errorf("%w: %w", ErrCommandFailed, r.Err)
	}
	if r.ExitCode != 0 {
		return r, fmt.Errorf("%w: it exited with code %d (exit 0 means fenced); see its output", ErrCommandFailed, r.ExitCode)
	}
	return r, nil
}

// Attempt is one fence method tried by Fence.
type Attempt struct {
	// Method is the method's name as given.
	Method string
	// Err is why it did not hold; empty when it held.
	Err string
	// Output is the fence command's output (capped by package hook), or a note from the SQL
	// fence (such as "in recovery").
	Output string
}

// Outcome is what Fence did.
type Outcome struct {
	// Method is the method that held, or "" when none did.
	Method string
	// Attempts are the methods tried, in order; the last one held when Method is set.
	Attempts []Attempt
}

// Fenced reports whether some method held.
func (o Outcome) Fenced() bool { return o.Method != "" }

// Fence tries methods in order ("sql": FenceSQL on t; "command": FenceCommand with cmd) and
// stops at the first that holds. No methods means DefaultMethods. An unknown method is recorded
// as a failed attempt and the next one is tried.
//
// So that an old primary that hangs (its packets dropped) cannot use up the time of a fence
// command listed after "sql", each SQL attempt gets ctx's remaining time less the timeouts of
// the command attempts after it, and DefaultSQLTimeout when ctx has no deadline.
func Fence(ctx context.Context, methods []string, t Target, cmd hook.Command) Outcome {
	if len(methods) == 0 {
		methods = DefaultMethods
	}
	var out Outcome
	for i, m := range methods {
		var a Attempt
		switch Method(m) {
		case MethodSQL:
			sctx, cancel := sqlContext(ctx, methods[i+1:], cmd)
			note, err := fenceSQL(sctx, t)
			cancel()
			a = Attempt{Method: m, Output: note}
			if err != nil {
				a.Err = err.Error()
			}
		case MethodCommand:
			r, err := FenceCommand(ctx, cmd)
			a = Attempt{Method: m, Output: r.Output}
			if err != nil {
				a.Err = err.Error()
			}
		default:
			a = Attempt{Method: m, Err: fmt.Sprintf("%v %q: use \"sql\" or \"command\"", ErrUnknownMethod, m)}
		}
		out.Attempts = append(out.Attempts, a)
		if a.Err == "" {
			out.Method = m
			return out
		}
		if ctx.Err() != nil {
			return out
		}
	}
	return out
}

// sqlContext bounds an SQL attempt so the command attempts in rest keep their time.
func sqlContext(ctx context.Context, rest []string, cmd hook.Command) (context.Context, context.CancelFunc) {
	dl, ok := ctx.Deadline()
	if !ok {
		return context.WithTimeout(ctx, DefaultSQLTimeout)
	}
	var reserve time.Duration
	for _, m := range rest {
		if Method(m) == MethodCommand && cmd.Shell != "" {
			to := cmd.Timeout
			if to <= 0 {
				to = hook.DefaultTimeout
			}
			reserve += to
		}
	}
	left := time.Until(dl)
	if reserve > 0 && left-reserve < left/2 {
		// Not enough time for both: split what is left.
		return context.WithTimeout(ctx, left/2)
	}
	return context.WithDeadline(ctx, dl.Add(-reserve))
}
