package hook

import (
	"context"
	"errors"
	"fmt"
	"github.com/regentdb/regent/internal/poll"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestExitCodes(t *testing.T) {
	for _, tc := range []struct {
		shell string
		code  int
		ok    bool
	}{
		{"true", 0, true},
		{"exit 0", 0, true},
		{"false", 1, false},
		{"exit 3", 3, false},
		{"exit 255", 255, false},
		{"no-such-command-regent-test", 127, false},
		{"kill -9 $$", -1, false},
	} {
		t.Run(tc.shell, func(t *testing.T) {
			r := Run(context.Background(), Command{Shell: tc.shell, Timeout: 30 * time.Second})
			if r.Err != nil {
				t.Fatalf("Err = %v", r.Err)
			}
			if r.ExitCode != tc.code || r.OK() != tc.ok {
				t.Errorf("ExitCode %d OK %v, want %d %v (output %q)", r.ExitCode, r.OK(), tc.code, tc.ok, r.Output)
			}
			if r.Duration <= 0 {
				t.Errorf("Duration %v", r.Duration)
			}
		})
	}
}

func TestOutputCombined(t *testing.T) {
	r := Run(context.Background(), Command{Shell: "echo out; echo err >&2; printf '\\377\\n'"})
	if !r.OK() {
		t.Fatalf("%+v", r)
	}
	if r.Output != "out\nerr\n\uFFFD\n" {
		t.Errorf("Output %q", r.Output)
	}
}

func TestEnvIsMinimalPlusGiven(t *testing.T) {
	t.Setenv("REGENT_TEST_SHOULD_NOT_LEAK", "x")
	t.Setenv("LANG", "C.UTF-8")
	r := Run(context.Background(), Command{
		Shell: "env",
		Env:   map[string]string{"REGENT_CLUSTER": "orders", "REGENT_FROM_NODE": "it's a 'node' with spaces"},
	})
	if !r.OK() {
		t.Fatalf("%+v", r)
	}
	got := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(r.Output), "\n") {
		k, v, _ := strings.Cut(line, "=")
		got[k] = v
	}
	if got["REGENT_CLUSTER"] != "orders" || got["REGENT_FROM_NODE"] != "it's a 'node' with spaces" {
		t.Errorf("REGENT_* not passed: %q", r.Output)
	}
	if got["PATH"] == "" || got["HOME"] == "" || got["LANG"] != "C.UTF-8" {
		t.Errorf("minimal env missing: %q", r.Output)
	}
	// sh itself may add PWD, SHLVL and _.
	allowed := map[string]bool{"PATH": true, "HOME": true, "LANG": true, "REGENT_CLUSTER": true, "REGENT_FROM_NODE": true, "PWD": true, "SHLVL": true, "_": true, "OLDPWD": true}
	for k := range got {
		if !allowed[k] {
			t.Errorf("unexpected variable %s in the command's environment", k)
		}
	}
}

func TestDir(t *testing.T) {
	dir := t.TempDir()
	r := Run(context.Background(), Command{Shell: "pwd -P", Dir: dir})
	want, _ := filepath.EvalSymlinks(dir)
	if !r.OK() || strings.TrimSpace(r.Output) != want {
		t.Errorf("pwd: %+v, want %s", r, want)
	}
	r = Run(context.Background(), Command{Shell: "pwd"})
	if strings.TrimSpace(r.Output) != "/" {
		t.Errorf("default dir: %q", r.Output)
	}
}

func TestNotStarted(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if r := Run(ctx, Command{Shell: "true"}); !errors.Is(r.Err, ErrNotStarted) || !errors.Is(r.Err, context.Canceled) {
		t.Errorf("cancelled context: %+v", r)
	}
	for name, cmd := range map[string]Command{
		"empty":       {Shell: "  "},
		"missing dir": {Shell: "true", Dir: "/nonexistent/regent/dir"},
		"bad env":     {Shell: "true", Env: map[string]string{"A=B": "x"}},
		"nul env":     {Shell: "true", Env: map[string]string{"A": "x\x00y"}},
	} {
		t.Run(name, func(t *testing.T) {
			r := Run(context.Background(), cmd)
			if !errors.Is(r.Err, ErrNotStarted) || r.ExitCode != -1 || r.OK() {
				t.Errorf("%+v", r)
			}
		})
	}
}

func TestOutputCap(t *testing.T) {
	// 100000 bytes: "a" * 50000 then "b" * 50000.
	r := Run(context.Background(), Command{Shell: "head -c 50000 /dev/zero | tr '\\0' a; head -c 50000 /dev/zero | tr '\\0' b"})
	if !r.OK() {
		t.Fatalf("%+v", r)
	}
	marker := fmt.Sprintf("\n[... regent: %d bytes of output truncated ...]\n", 100000-MaxOutput)
	want := strings.Repeat("a", MaxOutput/2) + marker + strings.Repeat("b", MaxOutput/2)
	if r.Output != want {
		t.Errorf("Output (%d bytes) is not the head, the marker and the tail", len(r.Output))
	}
	// Exactly MaxOutput bytes: no marker.
	r = Run(context.Background(), Command{Shell: fmt.Sprintf("head -c %d /dev/zero | tr '\\0' c", MaxOutput)})
	if r.Output != strings.Repeat("c", MaxOutput) {
		t.Errorf("output of exactly MaxOutput bytes changed (%d bytes)", len(r.Output))
	}
}

func TestCapBufferSmallWrites(t *testing.T) {
	b := &capBuffer{half: 4}
	for _, c := range "0123456789abcdef" {
		b.Write([]byte(string(c)))
	}
	if got := b.String(); got != "0123\n[... regent: 8 bytes of output truncated ...]\ncdef" {
		t.Errorf("%q", got)
	}
}

// startedChild runs cmd, which must write the pid of a `sleep 60` it started to the file named
// by $PIDFILE, in the background, and returns that pid once written and Run's result channel.
func startedChild(t *testing.T, ctx context.Context, cmd Command) (int, <-chan Result) {
	t.Helper()
	pidfile := filepath.Join(t.TempDir(), "pid")
	cmd.Env = map[string]string{"PIDFILE": pidfile}
	done := make(chan Result, 1)
	go func() { done <- Run(ctx, cmd) }()
	var pid int
	waitFor(t, 20*time.Second, "the child's pid file", func() bool {
		b, err := os.ReadFile(pidfile)
		if err != nil || !strings.HasSuffix(string(b), "\n") {
			return false
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil
	})
	if !alive(pid) {
		t.Fatalf("child %d is not running", pid)
	}
	return pid, done
}

// alive reports whether pid is a live process (a zombie counts as dead).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// Fields after the ")" closing the command name: state first.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] != 'Z' && s[i+2] != 'X'
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	if !poll.Until(d, 5*time.Millisecond, cond) {
		t.Fatalf("timed out waiting for %s", what)
	}
}

// hangingChild starts `sleep 60`, writes its pid to $PIDFILE and waits for it. The tests'
// timeouts (1s) leave a loaded machine room to get that far before the kill.
const hangingChild = `sleep 60 & echo $! > "$PIDFILE.tmp"; mv "$PIDFILE.tmp" "$PIDFILE"; wait`

func TestTimeoutKillsProcessGroup(t *testing.T) {
	pid, done := startedChild(t, context.Background(), Command{Shell: hangingChild, Timeout: time.Second})
	var r Result
	select {
	case r = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after its timeout")
	}
	if !errors.Is(r.Err, ErrTimeout) || !errors.Is(r.Err, context.DeadlineExceeded) || r.OK() || r.ExitCode != -1 {
		t.Fatalf("result %+v, want a timeout", r)
	}
	waitFor(t, 10*time.Second, fmt.Sprintf("child %d to die", pid), func() bool { return !alive(pid) })
}

func TestParentDeadline(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	pid, done := startedChild(t, ctx, Command{Shell: hangingChild, Timeout: time.Hour})
	r := <-done
	if !errors.Is(r.Err, ErrTimeout) || !strings.Contains(r.Err.Error(), "caller's deadline") {
		t.Fatalf("result %+v, want a timeout naming the caller's deadline", r)
	}
	waitFor(t, 10*time.Second, fmt.Sprintf("child %d to die", pid), func() bool { return !alive(pid) })
}

func TestCancelKillsProcessGroup(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pid, done := startedChild(t, ctx, Command{Shell: hangingChild, Timeout: time.Hour})
	cancel()
	r := <-done
	if !errors.Is(r.Err, ErrCanceled) || !errors.Is(r.Err, context.Canceled) || r.OK() {
		t.Fatalf("result %+v, want cancelled", r)
	}
	waitFor(t, 10*time.Second, fmt.Sprintf("child %d to die", pid), func() bool { return !alive(pid) })
}

func TestLeftoverChildrenKilledAfterExit(t *testing.T) {
	// The shell exits 0 at once, leaving a sleep behind that holds the output pipe.
	pidfile := filepath.Join(t.TempDir(), "pid")
	r := Run(context.Background(), Command{
		Shell: `sleep 60 & echo $! > "$PIDFILE"; echo bye`,
		Env:   map[string]string{"PIDFILE": pidfile},
	})
	if !r.OK() || r.Output != "bye\n" {
		t.Fatalf("%+v", r)
	}
	b, err := os.ReadFile(pidfile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, fmt.Sprintf("leftover child %d to die", pid), func() bool { return !alive(pid) })
}
