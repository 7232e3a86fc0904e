package main

import (
	"bytes"
	"context"
	"github.com/regentdb/regent/internal/poll"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/regentdb/regent/pgtest"
)

// syncBuffer is a bytes.Buffer that runLab may write while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// runLabWith runs `regent lab ARGS` with stdin in the background; it returns the output buffers
// and a channel delivering the exit code.
func runLabWith(t *testing.T, ctx context.Context, stdin io.Reader, args ...string) (*syncBuffer, *syncBuffer, <-chan int) {
	t.Helper()
	old := labStdin
	labStdin = stdin
	t.Cleanup(func() { labStdin = old })
	out, errOut := &syncBuffer{}, &syncBuffer{}
	code := make(chan int, 1)
	go func() { code <- runLab(ctx, args, out, errOut) }()
	return out, errOut, code
}

func waitOutput(t *testing.T, out *syncBuffer, want string, timeout time.Duration) {
	t.Helper()
	if !poll.Until(timeout, 20*time.Millisecond, func() bool { return strings.Contains(out.String(), want) }) {
		t.Fatalf("no %q in the lab's output after %v:\n%s", want, timeout, out.String())
	}
}

func TestLabQuitsOnQ(t *testing.T) {
	pr, pw := io.Pipe()
	defer pw.Close()
	out, errOut, code := runLabWith(t, context.Background(), pr, "--no-postgres", "--refresh", "100ms")
	waitOutput(t, out, "MEMBERS", time.Minute)
	if _, err := io.WriteString(pw, "x\nk\n"); err != nil {
		t.Fatal(err)
	}
	waitOutput(t, out, "nothing to kill", 10*time.Second)
	if !strings.Contains(out.String(), "type k + Enter") {
		t.Errorf("an unknown key did not print the help:\n%s", out.String())
	}
	if _, err := io.WriteString(pw, "q\n"); err != nil {
		t.Fatal(err)
	}
	select {
	case c := <-code:
		if c != 0 {
			t.Fatalf("exit %d: %s", c, errOut.String())
		}
	case <-time.After(time.Minute):
		t.Fatal("q did not stop the lab")
	}
	if !strings.Contains(out.String(), "stopping the lab") || !strings.Contains(out.String(), "grpc ") {
		t.Errorf("output:\n%s", out.String())
	}
}

// eofReader is an empty input that says when it has been read to its end.
type eofReader struct {
	once sync.Once
	seen chan struct{}
}

func (r *eofReader) Read([]byte) (int, error) {
	r.once.Do(func() { close(r.seen) })
	return 0, io.EOF
}

func TestLabKeepsRunningAtEndOfInput(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	in := &eofReader{seen: make(chan struct{})}
	out, errOut, code := runLabWith(t, ctx, in, "--no-postgres", "--refresh", "100ms")
	waitOutput(t, out, "MEMBERS", time.Minute)
	select {
	case <-in.seen:
	case <-time.After(time.Minute):
		t.Fatal("the lab never read its input")
	}
	// Ten refreshes after the end of input (as in CI, with no stdin), the lab still runs.
	select {
	case c := <-code:
		t.Fatalf("the lab ended (exit %d) at the end of its input: %s\n%s", c, errOut.String(), out.String())
	case <-time.After(time.Second):
	}
	cancel() // Ctrl-C
	select {
	case c := <-code:
		if c != 0 {
			t.Fatalf("exit %d after Ctrl-C: %s", c, errOut.String())
		}
	case <-time.After(time.Minute):
		t.Fatal("Ctrl-C did not stop the lab")
	}
	if !strings.Contains(out.String(), "stopping the lab") {
		t.Errorf("output:\n%s", out.String())
	}
}

func TestLabRejectsKillPrimaryWithoutPostgres(t *testing.T) {
	var out, errOut bytes.Buffer
	if c := runLab(context.Background(), []string{"--no-postgres", "--kill-primary"}, &out, &errOut); c != 2 || !strings.Contains(errOut.String(), "--kill-primary needs PostgreSQL") {
		t.Errorf("exit %d: %s", c, errOut.String())
	}
}

func TestLabKillPrimaryShowsTheFailover(t *testing.T) {
	pgtest.RequirePostgres(t)
	pr, pw := io.Pipe()
	defer pw.Close()
	out, errOut, code := runLabWith(t, context.Background(), pr, "--kill-primary", "--refresh", "200ms")
	waitOutput(t, out, "killed primary pg-us", 3*time.Minute)
	waitOutput(t, out, "failover 1 completed: pg-us (us-east) →", 2*time.Minute)
	waitOutput(t, out, "completed ", 10*time.Second) // the status table's event row
	// r brings the lost host back: the old primary rejoins as a standby.
	if _, err := io.WriteString(pw, "r\n"); err != nil {
		t.Fatal(err)
	}
	waitOutput(t, out, "the host of pg-us is back", 30*time.Second)
	waitOutput(t, out, "pg-us rejoined as a standby of", 2*time.Minute)
	// A second k kills the new primary (the cooldown then holds a second failover).
	if _, err := io.WriteString(pw, "k\n"); err != nil {
		t.Fatal(err)
	}
	if !poll.Until(30*time.Second, 20*time.Millisecond, func() bool { return strings.Count(out.String(), "killed primary") >= 2 }) {
		t.Fatalf("k did not kill the new primary:\n%s", out.String())
	}
	if _, err := io.WriteString(pw, "q\n"); err != nil {
		t.Fatal(err)
	}
	select {
	case c := <-code:
		if c != 0 {
			t.Fatalf("exit %d: %s", c, errOut.String())
		}
	case <-time.After(time.Minute):
		t.Fatal("q did not stop the lab")
	}
}
