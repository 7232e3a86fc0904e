package pgtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Role names every bench server has.
const (
	// SuperUser is the login role the bench creates on every primary (and
	// so on its standbys): SUPERUSER LOGIN REPLICATION with the bench's
	// password. Tests and probes connect as this role.
	SuperUser = "regent"
	// BootstrapUser is the superuser initdb creates. Replication
	// connections from standbys use it; trust authentication always
	// applies to it on loopback.
	BootstrapUser = "postgres"
)

// errPortInUse marks a start that failed because another process took the
// port between choosing it and binding it; the bench retries on a new port.
var errPortInUse = errors.New("port already in use")

// Server is one PostgreSQL postmaster managed by a Bench. Its exported
// fields are fixed once the Bench has returned it; do not modify them.
type Server struct {
	// Name is the node name; it is also the server's cluster_name (and so
	// the application_name a standby's WAL receiver reports) and the name
	// of its directory.
	Name string
	// Host is the loopback address the server listens on: 127.0.0.N for the bench's Nth server.
	Host string
	// Port is the TCP port the server listens on.
	Port int
	// Dir is the node's directory: it holds DataDir, the Unix socket and
	// the log file.
	Dir string
	// DataDir is the PostgreSQL data directory (PGDATA).
	DataDir string
	// LogPath is the file the postmaster's stderr (its log) is appended to.
	LogPath string

	b *Bench

	mu   sync.Mutex
	proc *postmaster // the current or last postmaster; nil before the first start
}

// postmaster is one run of the postgres program.
type postmaster struct {
	pid  int
	done chan struct{} // closed once the process has exited and been reaped
	err  error         // exit status; read only after done is closed
}

func (p *postmaster) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// DSN returns a keyword/value connection string for user and database db
// over TCP with sslmode=disable. For SuperUser it includes the bench's
// password, so it works whether or not the bench requires passwords.
func (s *Server) DSN(user, db string) string {
	dsn := fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable", s.Host, s.Port, quoteDSN(user), quoteDSN(db))
	if user == SuperUser && s.b.password != "" {
		dsn += " password=" + quoteDSN(s.b.password)
	}
	return dsn
}

// ConnString returns DSN(SuperUser, "postgres").
func (s *Server) ConnString() string { return s.DSN(SuperUser, "postgres") }

// String returns the server's name and address, e.g. "primary@127.0.0.1:54321".
func (s *Server) String() string { return fmt.Sprintf("%s@%s:%d", s.Name, s.Host, s.Port) }

// quoteDSN quotes a value for a keyword/value connection string.
func quoteDSN(v string) string {
	if v != "" && !strings.ContainsAny(v, " '\\\t\n") {
		return v
	}
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

// PID returns the postmaster's process id, or 0 when it is not running.
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil || s.proc.exited() {
		return 0
	}
	return s.proc.pid
}

// Running reports whether the postmaster process is alive. It says nothing
// about whether the server accepts connections yet.
func (s *Server) Running() bool { return s.PID() != 0 }

// Start starts the postmaster and waits until it accepts connections (for a
// standby: until it has reached a consistent state and allows read-only
// connections). Starting a running server does nothing. If processes of a
// previous run that was killed are still exiting, Start first waits for them,
// because PostgreSQL refuses to start while they hold its shared memory.
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.startLocked(ctx)
}

func (s *Server) startLocked(ctx context.Context) error {
	if s.proc != nil && !s.proc.exited() {
		return nil
	}
	if s.proc != nil {
		if err := s.waitGone(ctx, s.proc.pid); err != nil {
			return fmt.Errorf("pgtest: starting %s: processes of its previous run are still alive: %w", s, err)
		}
	}
	logf, err := os.OpenFile(s.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("pgtest: starting %s: opening its log: %w", s, err)
	}
	offset, _ := logf.Seek(0, io.SeekEnd)
	cmd := exec.Command(filepath.Join(s.b.binDir, "postgres"),
		"-D", s.DataDir,
		"-p", strconv.Itoa(s.Port),
		"-c", "listen_addresses="+s.Host,
		"-c", "unix_socket_directories="+s.Dir,
		"-c", "cluster_name="+s.Name,
	)
	cmd.Dir = s.Dir
	cmd.Env = childEnv(s.Dir)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = s.b.runAs.sysProcAttr(true)
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("pgtest: starting postgres for %s: %w", s, err)
	}
	p := &postmaster{pid: cmd.Process.Pid, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	s.proc = p

	err = WaitFor(ctx, func(ctx context.Context) (bool, error) {
		if p.exited() {
			return false, errExited
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		c, err := pgconn.Connect(cctx, s.DSN(BootstrapUser, "postgres"))
		if err != nil {
			return false, err
		}
		defer c.Close(cctx)
		// Make sure it is this server that answers, not another one that
		// took the port while ours failed to bind it.
		res, err := c.Exec(cctx, "SHOW data_directory").ReadAll()
		if err != nil {
			return false, err
		}
		if len(res) != 1 || len(res[0].Rows) != 1 || string(res[0].Rows[0][0]) != s.DataDir {
			return false, fmt.Errorf("another server answers on port %d", s.Port)
		}
		return true, nil
	})
	if err == nil {
		return nil
	}
	if !p.exited() {
		s.killGroupLocked()
	}
	<-p.done
	log := s.logSince(offset)
	if strings.Contains(log, "Address already in use") || strings.Contains(log, "could not bind") || strings.Contains(log, "could not create any TCP/IP sockets") {
		return fmt.Errorf("pgtest: starting %s: %w\n%s", s, errPortInUse, tail(log, 2000))
	}
	if errors.Is(err, errExited) {
		return fmt.Errorf("pgtest: postgres for %s exited while starting (%v); its log says:\n%s", s, p.err, tail(log, 4000))
	}
	return fmt.Errorf("pgtest: %s did not accept connections: %w; its log says:\n%s", s, err, tail(log, 4000))
}

var errExited = errors.New("postmaster exited")

// logSince returns the server's log from byte offset on.
func (s *Server) logSince(offset int64) string {
	f, err := os.Open(s.LogPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return ""
	}
	b, _ := io.ReadAll(io.LimitReader(f, 1<<20))
	return string(b)
}

// LogTail returns the last n bytes (at most) of the server's log, for
// diagnosing a failed test.
func (s *Server) LogTail(n int) string {
	fi, err := os.Stat(s.LogPath)
	if err != nil {
		return ""
	}
	return tail(s.logSince(max(0, fi.Size()-int64(n)-200)), n)
}

// Stop shuts the server down in "fast" mode (SIGINT: roll back open
// transactions, disconnect clients, write a shutdown checkpoint) and waits
// for every one of its processes to exit. If ctx ends first, the whole
// process group is killed and the context's error is returned. Stopping a
// server that is not running does nothing.
func (s *Server) Stop(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.proc
	if p == nil {
		return nil
	}
	if !p.exited() {
		_ = syscall.Kill(p.pid, syscall.SIGINT)
		select {
		case <-p.done:
		case <-ctx.Done():
			s.killGroupLocked()
			<-p.done
			return fmt.Errorf("pgtest: fast shutdown of %s did not finish, killed it instead: %w", s, ctx.Err())
		}
	} else if pid := s.foreignPostmaster(); pid != 0 {
		// Started by someone else on this data directory (a keeper's pg_ctl after pgtest's own
		// postmaster died): ask it for a fast shutdown too, rather than wait and then kill.
		_ = syscall.Kill(pid, syscall.SIGINT)
	}
	if err := s.waitGone(ctx, p.pid); err != nil {
		s.killGroupLocked()
		return fmt.Errorf("pgtest: %s stopped but some of its processes lingered, killed them: %w", s, err)
	}
	return nil
}

// foreignPostmaster returns the pid in the data directory's postmaster.pid when that process
// is alive, runs in the data directory and is not pgtest's own postmaster; else 0. s.mu is held.
func (s *Server) foreignPostmaster() int {
	b, err := os.ReadFile(filepath.Join(s.DataDir, "postmaster.pid"))
	if err != nil {
		return 0
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil || pid <= 0 || (s.proc != nil && pid == s.proc.pid) {
		return 0
	}
	for _, p := range dirProcs(s.DataDir) {
		if p == pid {
			return pid
		}
	}
	return 0
}

// PostmasterPID returns the pid of the postmaster running on the server's data directory:
// pgtest's own, or one someone else started there (a keeper's pg_ctl after pgtest's own
// died); 0 when none runs.
func (s *Server) PostmasterPID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil && !s.proc.exited() {
		return s.proc.pid
	}
	return s.foreignPostmaster()
}

// Kill9 sends SIGKILL to the postmaster alone (pgtest's own, or one someone else started on
// the data directory), as a crash would, then waits until its port refuses connections and its
// orphaned child processes have exited (killing them if they linger), so that Start can run
// again at once. Killing a server that is not running does nothing.
func (s *Server) Kill9() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	pid, own := 0, s.proc != nil && !s.proc.exited()
	if own {
		pid = s.proc.pid
	} else if pid = s.foreignPostmaster(); pid == 0 {
		return nil
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("pgtest: SIGKILL to %s (pid %d): %w", s, pid, err)
	}
	if own {
		<-s.proc.done
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	addr := net.JoinHostPort(s.Host, strconv.Itoa(s.Port))
	if err := WaitFor(ctx, func(ctx context.Context) (bool, error) {
		c, err := (&net.Dialer{Timeout: time.Second}).DialContext(ctx, "tcp", addr)
		if err == nil {
			c.Close()
			return false, fmt.Errorf("%s still accepts connections", addr)
		}
		return errors.Is(err, syscall.ECONNREFUSED), err
	}); err != nil {
		return fmt.Errorf("pgtest: %s was killed but its port does not refuse connections: %w", s, err)
	}
	gctx, gcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer gcancel()
	if err := s.waitGone(gctx, pid); err != nil {
		s.killGroupLocked()
	}
	if !own {
		// Not our child: until whoever inherited it (init) reaps it, its pid answers kill(pid, 0)
		// and a new postmaster takes the leftover postmaster.pid for a live server's.
		_ = WaitFor(gctx, func(context.Context) (bool, error) {
			return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH), fmt.Errorf("pid %d not reaped yet", pid)
		})
	}
	return nil
}

// kill kills every process of the server at once and waits for them; used
// by Bench.Close as the last resort.
func (s *Server) kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return
	}
	s.killGroupLocked()
	<-s.proc.done
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = s.waitGone(ctx, s.proc.pid)
}

func (s *Server) killGroupLocked() {
	if s.proc == nil {
		return
	}
	_ = syscall.Kill(-s.proc.pid, syscall.SIGKILL)
	_ = syscall.Kill(s.proc.pid, syscall.SIGKILL)
	for _, pid := range dirProcs(s.DataDir) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// waitGone waits until no live process is left of the server: none in the postmaster's
// process group, and none whose working directory is the data directory. The second check
// matters because every postmaster child calls setsid() and so leads a process group of its
// own; after a kill -9 of the postmaster, its backends take a moment to notice and exit, and
// until they have, they hold the shared memory a new postmaster refuses to start beside.
func (s *Server) waitGone(ctx context.Context, pgid int) error {
	return WaitFor(ctx, func(context.Context) (bool, error) {
		if groupAlive(pgid) {
			return false, fmt.Errorf("process group %d still has live processes", pgid)
		}
		if pids := dirProcs(s.DataDir); len(pids) > 0 {
			return false, fmt.Errorf("processes %v still run in %s", pids, s.DataDir)
		}
		return true, nil
	})
}

// Connect opens a new connection to the server's "postgres" database as
// SuperUser. The caller closes it.
func (s *Server) Connect(ctx context.Context) (*pgx.Conn, error) {
	return s.connectAs(ctx, SuperUser, "postgres")
}

func (s *Server) connectAs(ctx context.Context, user, db string) (*pgx.Conn, error) {
	c, err := pgx.Connect(ctx, s.DSN(user, db))
	if err != nil {
		return nil, fmt.Errorf("pgtest: connecting to %s as %s: %w", s, user, err)
	}
	return c, nil
}

// Exec runs one SQL statement as SuperUser on a fresh connection.
func (s *Server) Exec(ctx context.Context, sql string, args ...any) error {
	c, err := s.Connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	if _, err := c.Exec(ctx, sql, args...); err != nil {
		return fmt.Errorf("pgtest: on %s, %q: %w", s, sql, err)
	}
	return nil
}

// Row is the deferred result of QueryRow.
type Row struct {
	s    *Server
	ctx  context.Context
	sql  string
	args []any
}

// QueryRow runs a query returning one row as SuperUser on a fresh
// connection; the query runs when Scan is called.
func (s *Server) QueryRow(ctx context.Context, sql string, args ...any) Row {
	return Row{s: s, ctx: ctx, sql: sql, args: args}
}

// Scan runs the query and scans its single row into dest, as pgx.Row.Scan.
func (r Row) Scan(dest ...any) error {
	c, err := r.s.Connect(r.ctx)
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	if err := c.QueryRow(r.ctx, r.sql, r.args...).Scan(dest...); err != nil {
		return fmt.Errorf("pgtest: on %s, %q: %w", r.s, r.sql, err)
	}
	return nil
}

// Query runs a query as SuperUser on a fresh connection and returns every
// row's values, decoded as pgx decodes them (rows.Values).
func (s *Server) Query(ctx context.Context, sql string, args ...any) ([][]any, error) {
	c, err := s.Connect(ctx)
	if err != nil {
		return nil, err
	}
	defer c.Close(context.Background())
	rows, err := c.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("pgtest: on %s, %q: %w", s, sql, err)
	}
	defer rows.Close()
	var out [][]any
	for rows.Next() {
		v, err := rows.Values()
		if err != nil {
			return nil, fmt.Errorf("pgtest: on %s, %q: %w", s, sql, err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("pgtest: on %s, %q: %w", s, sql, err)
	}
	return out, nil
}
