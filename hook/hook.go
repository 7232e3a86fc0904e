// Package hook runs an operator's command (a fence command, pre_promote_command,
// post_failover_command) through /bin/sh with a minimal environment and a timeout, and
// reports its exit code and output.
//
// The command runs in its own process group. When the timeout passes or the context ends, the
// whole group is killed with SIGKILL, so a hung command's children die with it. When the shell
// exits, whatever it left running in its group is killed too: a hook is finished when its shell
// exits, and nothing it started outlives it.
//
// Limits: a process that leaves the group (setsid, setpgid, as `timeout` or a daemonising
// program does) is not killed; Run stops reading its output a moment after the group is gone. A
// child that changed user (sudo) cannot be killed unless regent runs as root.
package hook

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultTimeout is used when Command.Timeout is zero or negative (the policy's
// command_timeout_ms default).
const DefaultTimeout = 10 * time.Second

// MaxOutput is how much of a command's combined output Result.Output keeps: the first and the
// last MaxOutput/2 bytes, with a marker saying how much was left out in between.
const MaxOutput = 16 << 10

// Shell is the interpreter that runs Command.Shell (as `/bin/sh -c <Shell>`).
const Shell = "/bin/sh"

// outputGrace is how long Run waits for the output pipe to close once the command's process
// group is dead (a process that left the group may still hold it open).
const outputGrace = 2 * time.Second

// Errors in Result.Err; match them with errors.Is.
var (
	// ErrTimeout: the command ran longer than its timeout (or the context's deadline) and its
	// process group was killed. The error also wraps context.DeadlineExceeded.
	ErrTimeout = errors.New("hook: command timed out")
	// ErrCanceled: the context was cancelled while the command ran and its process group was
	// killed. The error also wraps context.Canceled.
	ErrCanceled = errors.New("hook: command cancelled")
	// ErrNotStarted: the command could not be started (empty command, bad environment name,
	// missing directory, no /bin/sh).
	ErrNotStarted = errors.New("hook: command not started")
)

// Command is an operator's command line and how to run it.
type Command struct {
	// Shell is the command line, run with `/bin/sh -c`.
	Shell string
	// Env is added to the minimal environment (PATH, HOME and LANG, taken from regent's own
	// environment or defaulted); by convention it holds REGENT_* variables describing the event.
	// A name given here overrides the minimal one.
	Env map[string]string
	// Timeout bounds the run; zero or negative means DefaultTimeout.
	Timeout time.Duration
	// Dir is the working directory; empty means "/".
	Dir string
}

// Result is what a command did.
type Result struct {
	// ExitCode is the shell's exit status; -1 when it was killed by a signal or never started.
	ExitCode int
	// Output is the combined stdout and stderr, at most MaxOutput bytes plus a truncation
	// marker, with invalid UTF-8 replaced (so it can go into protobuf strings and logs).
	Output string
	// Err is set when the command did not run to its own end: ErrTimeout, ErrCanceled or
	// ErrNotStarted (wrapped with details). A command that ran and exited non-zero has Err nil.
	Err error
	// Duration is how long Run took.
	Duration time.Duration
}

// OK reports whether the command ran to its end and exited 0.
func (r Result) OK() bool { return r.Err == nil && r.ExitCode == 0 }

// Run runs cmd and waits for it and everything it started in its process group. It never
// returns before the command's processes are dead (on timeout or cancellation they are killed).
func Run(ctx context.Context, cmd Command) Result {
	start := time.Now()
	res := run(ctx, cmd)
	res.Duration = time.Since(start)
	return res
}

func run(ctx context.Context, cmd Command) Result {
	notStarted := func(format string, args ...any) Result {
		return Result{ExitCode: -1, Err: fmt.Errorf("%w: "+format, append([]any{ErrNotStarted}, args...)...)}
	}
	if err := ctx.Err(); err != nil {
		return notStarted("its context had already ended: %w", err)
	}
	if strings.TrimSpace(cmd.Shell) == "" {
		return notStarted("the command line is empty; set the command in the cluster's policy or leave the hook unset")
	}
	env, err := buildEnv(cmd.Env)
	if err != nil {
		return notStarted("%v", err)
	}
	timeout := cmd.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	dir := cmd.Dir
	if dir == "" {
		dir = "/"
	}
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	pr, pw, err := os.Pipe()
	if err != nil {
		return notStarted("creating the output pipe: %v", err)
	}
	c := exec.Command(Shell, "-c", cmd.Shell)
	c.Env = env
	c.Dir = dir
	c.Stdout = pw // an *os.File: the child writes to it directly, no copying goroutine
	c.Stderr = pw
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := c.Start(); err != nil {
		pr.Close()
		pw.Close()
		return notStarted("%v (check the command's directory %q and that %s exists)", err, dir, Shell)
	}
	pw.Close() // the children hold their own copies
	pid := c.Process.Pid

	out := &capBuffer{half: MaxOutput / 2}
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		buf := make([]byte, 32<<10)
		for {
			n, err := pr.Read(buf)
			out.Write(buf[:n])
			if err != nil {
				return
			}
		}
	}()

	// Learn that the shell exited without reaping it, so that its pid, which is the process
	// group's id, cannot be reused before the group is killed below.
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		waitExitedNoReap(pid)
	}()

	var runErr error
	select {
	case <-exited:
	case <-ctx.Done():
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		<-exited
		switch {
		case parent.Err() != nil && errors.Is(parent.Err(), context.Canceled):
			runErr = fmt.Errorf("%w: its context was cancelled, so its process group was killed: %w", ErrCanceled, context.Canceled)
		default:
			runErr = fmt.Errorf("%w after %s: its process group was killed; make the command finish sooner or raise command_timeout_ms: %w",
				ErrTimeout, whichTimeout(timeout, parent), context.DeadlineExceeded)
		}
	}
	// Leftovers in the group (a backgrounded child) die now; the zombie leader keeps the group id.
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	_ = c.Wait() // reaps the shell; the exit status is in c.ProcessState

	t := time.NewTimer(outputGrace)
	select {
	case <-readDone:
		t.Stop()
	case <-t.C:
		pr.Close() // a process outside the group still holds the pipe: stop reading
		<-readDone
	}
	pr.Close()

	res := Result{ExitCode: -1, Output: out.String(), Err: runErr}
	if c.ProcessState != nil {
		res.ExitCode = c.ProcessState.ExitCode()
	}
	return res
}

// whichTimeout names the timeout that applied: the command's own, or the caller's deadline
// when that came first.
func whichTimeout(timeout time.Duration, parent context.Context) string {
	if dl, ok := parent.Deadline(); ok && parent.Err() != nil {
		return "the caller's deadline " + dl.Format(time.RFC3339)
	}
	return timeout.String()
}

// waitExitedNoReap blocks until process pid has exited, leaving it a zombie (WNOWAIT).
func waitExitedNoReap(pid int) {
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err == nil || !errors.Is(err, unix.EINTR) {
			return
		}
	}
}

// minimalEnv returns PATH, HOME and LANG from regent's environment, with defaults.
func minimalEnv() map[string]string {
	env := map[string]string{
		"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME": "/",
		"LANG": "C.UTF-8",
	}
	for k := range env {
		if v, ok := os.LookupEnv(k); ok && v != "" {
			env[k] = v
		}
	}
	return env
}

// buildEnv merges extra into the minimal environment and returns it sorted.
func buildEnv(extra map[string]string) ([]string, error) {
	env := minimalEnv()
	for k, v := range extra {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return nil, fmt.Errorf("environment variable name %q is invalid: it must be non-empty without '=' or NUL", k)
		}
		if strings.ContainsRune(v, 0) {
			return nil, fmt.Errorf("environment variable %s contains a NUL byte", k)
		}
		env[k] = v
	}
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		out = append(out, k+"="+env[k])
	}
	return out, nil
}

// capBuffer keeps the first half bytes written and the last half bytes, counting the rest.
type capBuffer struct {
	half  int
	head  []byte
	tail  []byte // the newest bytes, at most 2*half before trimming to half
	total int64
}

func (b *capBuffer) Write(p []byte) {
	b.total += int64(len(p))
	if n := min(b.half-len(b.head), len(p)); n > 0 {
		b.head = append(b.head, p[:n]...)
		p = p[n:]
	}
	if len(p) == 0 {
		return
	}
	b.tail = append(b.tail, p...)
	if len(b.tail) > 2*b.half {
		b.tail = append(b.tail[:0], b.tail[len(b.tail)-b.half:]...)
	}
}

func (b *capBuffer) String() string {
	var s bytes.Buffer
	s.Write(b.head)
	tail := b.tail
	if len(tail) > b.half {
		tail = tail[len(tail)-b.half:]
	}
	if dropped := b.total - int64(len(b.head)) - int64(len(tail)); dropped > 0 {
		fmt.Fprintf(&s, "\n[... regent: %d bytes of output truncated ...]\n", dropped)
	}
	s.Write(tail)
	return strings.ToValidUTF8(s.String(), "\uFFFD")
}
