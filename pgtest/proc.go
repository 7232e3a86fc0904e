package pgtest

import (
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
)

// runAs runs PostgreSQL programs as the right OS user: the "postgres" user
// when the caller is root, the caller otherwise.
type runAs struct {
	root     bool
	uid, gid int
	name     string
}

func lookupRunAs() (runAs, error) {
	if os.Geteuid() != 0 {
		return runAs{uid: os.Geteuid(), gid: os.Getegid()}, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return runAs{}, fmt.Errorf("pgtest: running as root, so PostgreSQL must run as the \"postgres\" OS user, but looking it up failed: %w; create it (installing the postgresql package does) or run the tests as an unprivileged user", err)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return runAs{}, fmt.Errorf("pgtest: user postgres has non-numeric uid %q: %w", u.Uid, err)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return runAs{}, fmt.Errorf("pgtest: user postgres has non-numeric gid %q: %w", u.Gid, err)
	}
	return runAs{root: true, uid: uid, gid: gid, name: "postgres"}, nil
}

// sysProcAttr returns the attributes for a PostgreSQL child: its own process
// group (so the whole tree can be killed) and, as root, the postgres user.
func (r runAs) sysProcAttr(deathSignal bool) *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{Setpgid: true}
	if r.root {
		a.Credential = &syscall.Credential{Uid: uint32(r.uid), Gid: uint32(r.gid)}
	}
	if deathSignal {
		// If this process dies without cleaning up, the kernel kills the
		// postmaster; its children notice and exit on their own.
		a.Pdeathsig = syscall.SIGKILL
	}
	return a
}

// chown gives path to the user PostgreSQL runs as (a no-op unless root).
func (r runAs) chown(path string) error {
	if !r.root {
		return nil
	}
	if err := os.Chown(path, r.uid, r.gid); err != nil {
		return fmt.Errorf("pgtest: giving %s to the postgres user: %w", path, err)
	}
	return nil
}

// childEnv is the environment for PostgreSQL programs: the caller's, less
// every PG* variable (which would redirect connections or files), in the C
// locale so that messages are in English.
func childEnv(home string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "PG") || k == "LANG" || strings.HasPrefix(k, "LC_") || k == "HOME" {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LANG=C", "LC_ALL=C", "HOME="+home)
}

// run runs one short-lived PostgreSQL program from binDir to completion and
// returns its combined output. Cancelling ctx kills its whole process group.
func (r runAs) run(ctx context.Context, binDir, cwd, prog string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, prog), args...)
	cmd.Dir = cwd
	cmd.Env = childEnv(cwd)
	cmd.SysProcAttr = r.sysProcAttr(true)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.Cancel = func() error {
		if cmd.Process == nil {
			return nil
		}
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	err := cmd.Run()
	if err != nil {
		if ctx.Err() != nil {
			err = errors.Join(err, ctx.Err())
		}
		return out.Bytes(), fmt.Errorf("pgtest: %s %s failed: %w\n%s", prog, strings.Join(args, " "), err, tail(out.String(), 4000))
	}
	return out.Bytes(), nil
}

// groupAlive reports whether any process other than a zombie is left in the
// process group pgid. It reads /proc where it can, because zombies waiting to
// be reaped by init still count for kill(2) but hold no resources.
func groupAlive(pgid int) bool {
	if pgid <= 0 {
		return false
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return syscall.Kill(-pgid, 0) == nil
	}
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// Fields after the command name, which is in parentheses and may
		// itself contain spaces or parentheses: state ppid pgrp ...
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 3 {
			continue
		}
		if f[2] == strconv.Itoa(pgid) && f[0] != "Z" && f[0] != "X" {
			return true
		}
	}
	return false
}

// dirProcs returns the live (not zombie) processes whose working directory is dir: a
// postmaster and all its children run in their data directory.
func dirProcs(dir string) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cwd, err := os.Readlink(filepath.Join("/proc", e.Name(), "cwd"))
		if err != nil || cwd != dir {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		if i := bytes.LastIndexByte(b, ')'); i >= 0 {
			if f := strings.Fields(string(b[i+1:])); len(f) > 0 && (f[0] == "Z" || f[0] == "X") {
				continue
			}
		}
		out = append(out, pid)
	}
	return out
}

// tail returns at most the last n bytes of s, cut at a line start.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[len(s)-n:]
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return "..." + s
}
