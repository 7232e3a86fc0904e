package rejoin

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// Local is the PostgreSQL cluster on this host that is being rejoined: the old primary.
type Local struct {
	// BinDir holds the PostgreSQL programs of the cluster's major version (postgres,
	// pg_controldata, pg_waldump, pg_rewind, pg_basebackup), e.g. /usr/lib/postgresql/15/bin.
	BinDir string
	// DataDir is the cluster's data directory (PGDATA), an absolute path.
	DataDir string
	// ConfigFile is the main configuration file when it is not DataDir/postgresql.conf (the
	// Debian layout keeps it in /etc/postgresql/<version>/<name>/). It is used only to start the
	// server in single-user mode for crash recovery; empty means DataDir/postgresql.conf.
	ConfigFile string
	// RunAs is the OS user that runs PostgreSQL programs. PostgreSQL refuses to run as root, so
	// when regent runs as root every program runs as this user; empty means the owner of DataDir
	// (which is the user the server runs as: PostgreSQL insists on it), or of the directory
	// above it when DataDir is missing. When regent does not run as root it cannot change
	// users, so RunAs must be empty or name regent's own user.
	RunAs string
}

// String names the cluster by its data directory.
func (l Local) String() string { return l.DataDir }

// validate checks the fields every operation needs.
func (l Local) validate() error {
	var errs []error
	if l.BinDir == "" {
		errs = append(errs, errors.New("BinDir is empty; set it to the PostgreSQL bin directory, e.g. /usr/lib/postgresql/15/bin"))
	}
	if l.DataDir == "" || !filepath.IsAbs(l.DataDir) {
		errs = append(errs, fmt.Errorf("DataDir %q is not an absolute path", l.DataDir))
	}
	if l.ConfigFile != "" && !filepath.IsAbs(l.ConfigFile) {
		errs = append(errs, fmt.Errorf("ConfigFile %q is not an absolute path", l.ConfigFile))
	}
	if len(errs) > 0 {
		return fmt.Errorf("rejoin: local cluster settings are invalid: %w", errors.Join(errs...))
	}
	return nil
}

// osUser is who PostgreSQL programs run as.
type osUser struct {
	name   string
	home   string
	uid    uint32
	gid    uint32
	groups []uint32
	// switchTo is true when regent runs as root and so must change to this user for every
	// child process (and give it the files it creates).
	switchTo bool
}

// resolveUser decides who runs PostgreSQL programs for l (see Local.RunAs).
func (l Local) resolveUser() (*osUser, error) {
	if os.Geteuid() != 0 {
		cur, err := user.Current()
		if err != nil {
			return nil, fmt.Errorf("rejoin: looking up the current user: %w", err)
		}
		if l.RunAs != "" && l.RunAs != cur.Username && l.RunAs != cur.Uid {
			return nil, fmt.Errorf("rejoin: RunAs is %q but regent runs as %q and cannot change users without root; leave RunAs empty or run regent as root", l.RunAs, cur.Username)
		}
		return &osUser{name: cur.Username, home: cur.HomeDir, uid: uint32(os.Geteuid()), gid: uint32(os.Getegid())}, nil
	}
	var u *user.User
	var err error
	if l.RunAs != "" {
		if u, err = user.Lookup(l.RunAs); err != nil {
			if _, isNum := strconv.Atoi(l.RunAs); isNum == nil {
				u, err = user.LookupId(l.RunAs)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("rejoin: RunAs user %q: %w; set RunAs to the OS user the PostgreSQL server runs as", l.RunAs, err)
		}
	} else {
		owned := l.DataDir
		if _, err := os.Stat(owned); errors.Is(err, os.ErrNotExist) {
			owned = filepath.Dir(owned) // a re-clone into a missing data directory
		}
		fi, err := os.Stat(owned)
		if err != nil {
			return nil, fmt.Errorf("rejoin: finding the owner of %s (to run PostgreSQL programs as): %w; set Local.RunAs or fix DataDir", l.DataDir, err)
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return nil, fmt.Errorf("rejoin: cannot read the owner of %s; set Local.RunAs", owned)
		}
		if u, err = user.LookupId(strconv.FormatUint(uint64(st.Uid), 10)); err != nil {
			return nil, fmt.Errorf("rejoin: the owner (uid %d) of %s: %w; set Local.RunAs", st.Uid, owned, err)
		}
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("rejoin: user %q has a non-numeric uid or gid (%s/%s)", u.Username, u.Uid, u.Gid)
	}
	if uid == 0 {
		return nil, fmt.Errorf("rejoin: PostgreSQL programs would run as root (user %q), which PostgreSQL refuses; set Local.RunAs to the cluster's OS user (usually postgres) or give DataDir to it", u.Username)
	}
	ou := &osUser{name: u.Username, home: u.HomeDir, uid: uint32(uid), gid: uint32(gid), switchTo: true}
	if ids, err := u.GroupIds(); err == nil {
		for _, id := range ids {
			if g, err := strconv.ParseUint(id, 10, 32); err == nil {
				ou.groups = append(ou.groups, uint32(g))
			}
		}
	}
	return ou, nil
}

// chown gives path to the user (a no-op unless regent runs as root).
func (u *osUser) chown(path string) error {
	if !u.switchTo {
		return nil
	}
	if err := os.Lchown(path, int(u.uid), int(u.gid)); err != nil {
		return fmt.Errorf("rejoin: giving %s to user %s: %w", path, u.name, err)
	}
	return nil
}

// childEnv is a minimal environment for PostgreSQL programs: no PG* variable of regent's own
// (one could redirect a connection or a data directory), messages in English (they are parsed),
// times in UTC, and the given extra variables.
func (u *osUser) childEnv(extra ...string) []string {
	path := os.Getenv("PATH")
	if path == "" {
		path = "/usr/local/bin:/usr/bin:/bin"
	}
	home := u.home
	if home == "" {
		home = "/"
	}
	return append([]string{"PATH=" + path, "HOME=" + home, "LANG=C", "LC_ALL=C", "TZ=UTC"}, extra...)
}

// command prepares prog from l.BinDir to run as u in its own process group; cancelling ctx
// kills the whole group. The child also gets SIGKILL if regent dies, so that no pg_rewind or
// pg_basebackup outlives the lock that keeps a second one off the same data directory.
func (u *osUser) command(ctx context.Context, l Local, env []string, prog string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(l.BinDir, prog), args...)
	cmd.Dir = "/"
	cmd.Env = env
	attr := &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if u.switchTo {
		attr.Credential = &syscall.Credential{Uid: u.uid, Gid: u.gid, Groups: u.groups}
	}
	cmd.SysProcAttr = attr
	cmd.Cancel = func() error {
		if cmd.Process == nil {
			return nil
		}
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	return cmd
}

// maxOutput is how much of a program's output run keeps: its last maxOutput bytes.
const maxOutput = 64 << 10

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu      sync.Mutex
	buf     []byte
	max     int
	dropped bool
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.max:]...)
		t.dropped = true
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := string(bytes.ToValidUTF8(t.buf, []byte("?")))
	if t.dropped {
		if i := strings.IndexByte(s, '\n'); i >= 0 {
			s = s[i+1:]
		}
		s = "...\n" + s
	}
	return s
}

// run runs prog to completion and returns the tail of its combined output.
func (u *osUser) run(ctx context.Context, l Local, env []string, prog string, args ...string) (string, error) {
	cmd := u.command(ctx, l, env, prog, args...)
	out := &tailBuffer{max: maxOutput}
	cmd.Stdout = out
	cmd.Stderr = out
	err := cmd.Run()
	if err != nil {
		if ctx.Err() != nil {
			err = errors.Join(err, ctx.Err())
		}
		return out.String(), fmt.Errorf("%s failed: %w", prog, err)
	}
	return out.String(), nil
}

// scanLines runs prog and hands each line of its standard output to fn as it comes (fn may
// keep nothing of the slice). It returns the tail of the standard error and the exit error;
// an error that is not an ordinary non-zero exit (a missing program, a signal, ctx ending)
// is returned as startErr, because then the output read so far cannot be trusted to be whole.
func (u *osUser) scanLines(ctx context.Context, l Local, env []string, fn func(line []byte), prog string, args ...string) (stderr string, exitErr, startErr error) {
	cmd := u.command(ctx, l, env, prog, args...)
	errBuf := &tailBuffer{max: 8 << 10}
	cmd.Stderr = errBuf
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return "", nil, fmt.Errorf("%s: %w", prog, err)
	}
	if err := cmd.Start(); err != nil {
		return "", nil, fmt.Errorf("starting %s: %w", prog, err)
	}
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		fn(sc.Bytes())
	}
	scanErr := sc.Err()
	if scanErr != nil {
		// Drain so that the program is not blocked on a full pipe while we wait for it.
		_, _ = io.Copy(io.Discard, stdout)
	}
	err = cmd.Wait()
	switch {
	case ctx.Err() != nil:
		return errBuf.String(), nil, fmt.Errorf("%s interrupted: %w", prog, ctx.Err())
	case scanErr != nil:
		return errBuf.String(), nil, fmt.Errorf("reading the output of %s: %w", prog, scanErr)
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return errBuf.String(), nil, fmt.Errorf("%s was killed by signal %v", prog, ws.Signal())
		}
		return errBuf.String(), err, nil
	}
	if err != nil {
		return errBuf.String(), nil, fmt.Errorf("%s: %w", prog, err)
	}
	return errBuf.String(), nil, nil
}

// lockFile is the path of the lock that keeps two rejoin operations off one data directory.
// It sits beside the data directory, not in it: pg_rewind deletes files the source lacks, and
// pg_basebackup needs an empty directory.
func (l Local) lockFile() string {
	return filepath.Join(filepath.Dir(l.DataDir), "."+filepath.Base(l.DataDir)+".regent-rejoin.lock")
}

// lock takes the data directory's rejoin lock without waiting; the returned function releases
// it. The lock is an flock, so it goes away with the process that held it.
func (l Local) lock() (func(), error) {
	path := l.lockFile()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("rejoin: creating the lock file %s: %w; regent needs write access to the directory above the data directory", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: another rejoin operation holds %s; wait for it to finish", ErrBusy, path)
		}
		return nil, fmt.Errorf("rejoin: locking %s: %w", path, err)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

// lockStopped takes the lock and checks that the server is stopped.
func (l Local) lockStopped() (func(), error) {
	unlock, err := l.lock()
	if err != nil {
		return nil, err
	}
	if err := l.checkStopped(); err != nil {
		unlock()
		return nil, err
	}
	return unlock, nil
}

// runningPIDs returns the processes that are using the data directory: the postmaster named in
// postmaster.pid when it is alive, and any process whose working directory is the data
// directory (the postmaster and all its children chdir there, so this also finds backends left
// behind by a killed postmaster, which still hold its shared memory). Processes of other users
// whose working directory cannot be read are missed when regent is not root; they would be the
// server's, which then refuses to start on its own.
func (l Local) runningPIDs() []int {
	real, err := filepath.EvalSymlinks(l.DataDir)
	if err != nil {
		real = l.DataDir
	}
	seen := map[int]bool{}
	var pids []int
	if b, err := os.ReadFile(filepath.Join(l.DataDir, "postmaster.pid")); err == nil {
		first, _, _ := strings.Cut(string(b), "\n")
		if pid, err := strconv.Atoi(strings.TrimSpace(first)); err == nil && pid > 0 {
			if cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid)); err == nil {
				if cwd == real || cwd == l.DataDir {
					seen[pid] = true
					pids = append(pids, pid)
				}
			} else if alive(pid) && !procReadable() {
				// Without /proc we cannot tell a reused PID apart: assume the server runs.
				seen[pid] = true
				pids = append(pids, pid)
			}
		}
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return pids
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || seen[pid] {
			continue
		}
		cwd, err := os.Readlink(filepath.Join("/proc", e.Name(), "cwd"))
		if err != nil {
			continue
		}
		if (cwd == real || cwd == l.DataDir) && isPostgres(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// isPostgres reports whether the process runs a postgres executable, or may (its executable
// cannot be read): an operator's shell that sits in the data directory does not count.
func isPostgres(pid int) bool {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return true
	}
	base := filepath.Base(strings.TrimSuffix(exe, " (deleted)"))
	return base == "postgres" || base == "postmaster"
}

// alive reports whether a process with this PID exists.
func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

func procReadable() bool {
	_, err := os.Stat("/proc/self/cwd")
	return err == nil
}

// checkStopped fails with ErrRunning when any process uses the data directory.
func (l Local) checkStopped() error {
	if pids := l.runningPIDs(); len(pids) > 0 {
		return fmt.Errorf("%w: processes %v use %s; stop PostgreSQL (and wait for all of its processes to exit) first", ErrRunning, pids, l.DataDir)
	}
	return nil
}

// writeFileAtomic writes data to path through a temporary file in the same directory, with
// mode perm, owned by u, synced, then renamed over path, and syncs the directory.
func writeFileAtomic(u *osUser, path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".regent-*")
	if err != nil {
		return fmt.Errorf("rejoin: writing %s: %w", path, err)
	}
	name := tmp.Name()
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(name)
		}
	}()
	if err := tmp.Chmod(perm); err != nil {
		return fmt.Errorf("rejoin: writing %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("rejoin: writing %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("rejoin: syncing %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("rejoin: writing %s: %w", path, err)
	}
	if err := u.chown(name); err != nil {
		return err
	}
	if err := os.Rename(name, path); err != nil {
		return fmt.Errorf("rejoin: replacing %s: %w", path, err)
	}
	ok = true
	return syncDir(dir)
}

// syncDir fsyncs a directory so that a rename or a new entry in it is durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("rejoin: syncing %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("rejoin: syncing %s: %w", dir, err)
	}
	return nil
}
