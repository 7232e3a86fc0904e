package keeper

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/regentdb/regent/internal/pglsn"
)

// pgCtl runs pg_ctl and pg_controldata on the local data directory, as run_as when the keeper
// is root (both programs refuse to run as root).
type pgCtl struct {
	binDir, dataDir string
	cred            *syscall.Credential // nil: run as the keeper's own user
	home            string
	options         []string
	logPath         string
	startTimeout    time.Duration
}

// ErrNoDataDir: pg_ctl found no usable data directory.
var ErrNoDataDir = errors.New("keeper: the data directory is missing or not a PostgreSQL data directory")

func newPGCtl(cfg Config) (*pgCtl, error) {
	p := &pgCtl{binDir: cfg.BinDir, dataDir: cfg.DataDir, options: cfg.PostgresOptions, logPath: cfg.PostgresLog,
		startTimeout: cfg.StartTimeout.Duration, home: "/"}
	if os.Geteuid() != 0 {
		return p, nil
	}
	u, err := user.Lookup(cfg.RunAs)
	if err != nil {
		return nil, fmt.Errorf("run_as %q: %w; create the user PostgreSQL runs as, or set run_as", cfg.RunAs, err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("run_as %q has a non-numeric uid or gid (%s:%s)", cfg.RunAs, u.Uid, u.Gid)
	}
	p.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	if gids, err := u.GroupIds(); err == nil {
		for _, g := range gids {
			if n, err := strconv.ParseUint(g, 10, 32); err == nil {
				p.cred.Groups = append(p.cred.Groups, uint32(n))
			}
		}
	}
	if u.HomeDir != "" {
		p.home = u.HomeDir
	}
	return p, nil
}

// command builds a PostgreSQL program's command: its own process group (a signal to the
// keeper's group must not reach PostgreSQL), run_as's credentials, an environment without
// PG* variables (which would redirect it) and in the C locale (so messages can be matched).
func (p *pgCtl) command(ctx context.Context, prog string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(p.binDir, prog), args...)
	cmd.Dir = "/"
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "PG") || k == "LANG" || strings.HasPrefix(k, "LC_") || k == "HOME" {
			continue
		}
		env = append(env, kv)
	}
	cmd.Env = append(env, "LANG=C", "LC_ALL=C", "HOME="+p.home)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: p.cred}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	return cmd
}

// output runs a short program and returns its combined output and exit code (-1 when it did
// not run or was killed).
func (p *pgCtl) output(ctx context.Context, prog string, args ...string) ([]byte, int, error) {
	cmd := p.command(ctx, prog, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ctx.Err() == nil {
		return out.Bytes(), ee.ExitCode(), nil
	}
	if err != nil {
		return out.Bytes(), -1, fmt.Errorf("run %s: %w", prog, err)
	}
	return out.Bytes(), 0, nil
}

// Status reports whether a postmaster runs on the data directory (pg_ctl status: exit 0
// running, 3 not running, 4 no usable data directory).
func (p *pgCtl) Status(ctx context.Context) (bool, error) {
	out, code, err := p.output(ctx, "pg_ctl", "status", "-D", p.dataDir)
	switch {
	case err != nil:
		return false, err
	case code == 0:
		return true, nil
	case code == 3:
		return false, nil
	case code == 4:
		return false, fmt.Errorf("%w: pg_ctl status on %s: %s; initdb or clone the server into data_dir, or fix data_dir", ErrNoDataDir, p.dataDir, strings.TrimSpace(string(out)))
	}
	return false, fmt.Errorf("pg_ctl status on %s exited %d: %s", p.dataDir, code, strings.TrimSpace(string(out)))
}

// readOnlyOption is how the keeper starts a server that must not take writes.
const readOnlyOption = "default_transaction_read_only=on"

// Start starts the server with pg_ctl start and waits (up to start_timeout) until it accepts
// connections. readOnly adds -c default_transaction_read_only=on to the server's command
// line, so not one transaction starts read-write by default.
func (p *pgCtl) Start(ctx context.Context, readOnly bool) error {
	opts := make([]string, 0, len(p.options)+2)
	for _, o := range p.options {
		opts = append(opts, shellQuote(o))
	}
	if readOnly {
		opts = append(opts, "-c", readOnlyOption)
	}
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("open postgres_log %s: %w; fix postgres_log or make its directory writable", p.logPath, err)
	}
	defer logf.Close()
	fi, _ := logf.Stat()
	offset := int64(0)
	if fi != nil {
		offset = fi.Size()
	}
	secs := max(1, int(p.startTimeout/time.Second))
	args := []string{"start", "-D", p.dataDir, "-w", "-t", strconv.Itoa(secs)}
	if len(opts) > 0 {
		args = append(args, "-o", strings.Join(opts, " "))
	}
	sctx, cancel := context.WithTimeout(ctx, p.startTimeout+10*time.Second)
	defer cancel()
	cmd := p.command(sctx, "pg_ctl", args...)
	// Not a pipe: the postmaster inherits these, and a pipe would keep Wait waiting for it.
	cmd.Stdout, cmd.Stderr = logf, logf
	// pg_ctl exits once the server is up; the postmaster lives on, detached from it.
	cmd.Cancel = func() error { return cmd.Process.Kill() }
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("pg_ctl start -D %s failed: %w; its output and the server's log are in %s:\n%s", p.dataDir, err, p.logPath, tailFile(p.logPath, offset, 2000))
	}
	return nil
}

// Stop stops the server (mode "fast" or "immediate") and waits until it is down; a server
// that is not running is fine.
func (p *pgCtl) Stop(ctx context.Context, mode string, timeout time.Duration) error {
	secs := max(1, int(timeout/time.Second))
	sctx, cancel := context.WithTimeout(ctx, timeout+5*time.Second)
	defer cancel()
	out, code, err := p.output(sctx, "pg_ctl", "stop", "-D", p.dataDir, "-m", mode, "-w", "-t", strconv.Itoa(secs))
	if err != nil {
		return fmt.Errorf("pg_ctl stop -m %s: %w", mode, err)
	}
	if code != 0 {
		if running, serr := p.Status(ctx); serr == nil && !running {
			return nil
		}
		return fmt.Errorf("pg_ctl stop -m %s -D %s exited %d: %s", mode, p.dataDir, code, strings.TrimSpace(string(out)))
	}
	return nil
}

// StartedReadOnly reports whether the running server was started with the keeper's
// read-only option (postmaster.opts records the command line of the last start).
func (p *pgCtl) StartedReadOnly() bool {
	b, err := os.ReadFile(filepath.Join(p.dataDir, "postmaster.opts"))
	return err == nil && bytes.Contains(b, []byte(readOnlyOption))
}

// StandbyConfigured reports whether the data directory will start in recovery
// (standby.signal or recovery.signal), so it cannot take writes when started.
func (p *pgCtl) StandbyConfigured() bool {
	for _, f := range []string{"standby.signal", "recovery.signal"} {
		if _, err := os.Stat(filepath.Join(p.dataDir, f)); err == nil {
			return true
		}
	}
	return false
}

// ControlData runs pg_controldata and returns its "key: value" lines.
func (p *pgCtl) ControlData(ctx context.Context) (map[string]string, error) {
	out, code, err := p.output(ctx, "pg_controldata", "-D", p.dataDir)
	if err != nil {
		return nil, err
	}
	if code != 0 {
		return nil, fmt.Errorf("pg_controldata -D %s exited %d: %s", p.dataDir, code, strings.TrimSpace(string(out)))
	}
	return parseControlData(out), nil
}

// parseControlData splits pg_controldata's output into key → value.
func parseControlData(out []byte) map[string]string {
	m := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		m[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	return m
}

// Control-file facts the keeper reports when the server does not answer.
const (
	cdState       = "Database cluster state"
	cdCheckpoint  = "Latest checkpoint location"
	cdMinRecovery = "Minimum recovery ending location"
)

// controlFacts interprets pg_controldata: whether crash recovery is in progress and the
// furthest WAL position the control file vouches for (see DESIGN.md, "final LSN").
func controlFacts(m map[string]string) (crashRecovery bool, lsn uint64) {
	crashRecovery = m[cdState] == "in crash recovery"
	for _, k := range []string{cdCheckpoint, cdMinRecovery} {
		if v, err := pglsn.Parse(m[k]); err == nil && v > lsn {
			lsn = v
		}
	}
	return crashRecovery, lsn
}

// shellQuote quotes s for the /bin/sh command line pg_ctl builds from -o.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_=./:,@+", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// tailFile returns at most n bytes of path from offset on (the end of it when longer).
func tailFile(path string, offset int64, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	if fi.Size()-offset > int64(n) {
		offset = fi.Size() - int64(n)
	}
	if _, err := f.Seek(offset, 0); err != nil {
		return ""
	}
	b := make([]byte, n)
	k, _ := f.Read(b)
	return string(b[:k])
}
