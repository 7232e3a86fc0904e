package cutproxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/regentdb/regent/internal/poll"
)

// wait bounds every poll; quiet is how long a test listens for bytes that must not come.
const (
	wait  = 10 * time.Second
	quiet = 300 * time.Millisecond
)

// echoServer answers every line with the same line, on a free loopback port.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				io.Copy(c, c)
				c.Close()
			}()
		}
	}()
	return ln.Addr().String()
}

func start(t *testing.T, target string) *Proxy {
	t.Helper()
	p, err := New("127.0.0.1:0", target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Error(err)
		}
	})
	return p
}

// conn is a client connection through a proxy.
type conn struct {
	net.Conn
	r *bufio.Reader
}

func dial(t *testing.T, addr string) *conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, wait)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &conn{Conn: c, r: bufio.NewReader(c)}
}

// roundTrip sends a line and reads the echo within d.
func (c *conn) roundTrip(line string, d time.Duration) (string, error) {
	c.SetDeadline(time.Now().Add(d))
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return "", err
	}
	got, err := c.r.ReadString('\n')
	if err != nil {
		return "", err
	}
	return got[:len(got)-1], nil
}

// tryEcho connects through addr and echoes one line within d; a reset may already end the
// connect.
func tryEcho(t *testing.T, addr string, d time.Duration) error {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, d)
	if err != nil {
		return err
	}
	defer c.Close()
	cc := &conn{Conn: c, r: bufio.NewReader(c)}
	_, err = cc.roundTrip("x", d)
	return err
}

func mustEcho(t *testing.T, c *conn, line string) {
	t.Helper()
	got, err := c.roundTrip(line, wait)
	if err != nil || got != line {
		t.Fatalf("echo of %q through the proxy: %q, %v", line, got, err)
	}
}

// timedOut reports whether err is a deadline expiring (the connection hangs).
func timedOut(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

func TestForwardsUntilCut(t *testing.T) {
	p := start(t, echoServer(t))
	if p.Target() == "" || p.Port() == 0 || p.Host() != "127.0.0.1" {
		t.Fatalf("addresses: %s host %s port %d", p, p.Host(), p.Port())
	}
	a, b := dial(t, p.Addr()), dial(t, p.Addr())
	mustEcho(t, a, "hello")
	mustEcho(t, b, "world")
	if s := p.Stats(); s.Forwarded != 2 {
		t.Fatalf("stats %+v, want 2 forwarded", s)
	}
	p.Cut(Refuse)
	if !p.IsCut() {
		t.Fatal("IsCut false after Cut")
	}
	// Existing connections end at once: no echo, the read fails (EOF or reset), not a hang.
	for _, c := range []*conn{a, b} {
		if _, err := c.roundTrip("after", wait); err == nil || timedOut(err) {
			t.Fatalf("an existing connection after the cut: %v, want it closed", err)
		}
	}
}

func TestRefuseResetsNewConnections(t *testing.T) {
	p := start(t, echoServer(t))
	p.Cut(Refuse)
	if err := tryEcho(t, p.Addr(), wait); err == nil || timedOut(err) {
		t.Fatalf("a new connection through a refusing cut: %v, want it reset", err)
	}
	if s := p.Stats(); s.Refused != 1 || s.Forwarded != 0 {
		t.Fatalf("stats %+v, want 1 refused", s)
	}
	p.Heal()
	if p.IsCut() {
		t.Fatal("IsCut true after Heal")
	}
	mustEcho(t, dial(t, p.Addr()), "again")
}

func TestBlackholeHoldsNewConnections(t *testing.T) {
	p := start(t, echoServer(t))
	p.Cut(Blackhole)
	c := dial(t, p.Addr())
	// The connection is accepted, then nothing comes back: the read hangs to the deadline.
	if _, err := c.roundTrip("x", quiet); !timedOut(err) {
		t.Fatalf("a new connection through a blackhole: %v, want a timeout", err)
	}
	if !poll.Until(wait, 10*time.Millisecond, func() bool { return p.Stats().Held == 1 }) {
		t.Fatalf("stats %+v, want 1 held", p.Stats())
	}
	// Heal closes the held connection (its client reconnects) and forwards new ones.
	p.Heal()
	if _, err := c.roundTrip("x", wait); err == nil || timedOut(err) {
		t.Fatalf("a held connection after the heal: %v, want it closed", err)
	}
	mustEcho(t, dial(t, p.Addr()), "healed")
}

func TestNoBytesCrossACut(t *testing.T) {
	// Clients keep connecting and echoing while the proxy is cut: no request sent after Cut
	// returns gets an answer until Heal. (An answer sent before may still be read after.)
	p := start(t, echoServer(t))
	stop := make(chan struct{})
	var mu sync.Mutex
	var lastEcho time.Time // when the newest answered request was sent
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				c, err := net.DialTimeout("tcp", p.Addr(), time.Second)
				if err != nil {
					continue
				}
				cc := &conn{Conn: c, r: bufio.NewReader(c)}
				for range 20 {
					sent := time.Now()
					if _, err := cc.roundTrip("ping", 100*time.Millisecond); err != nil {
						break
					}
					mu.Lock()
					if sent.After(lastEcho) {
						lastEcho = sent
					}
					mu.Unlock()
				}
				c.Close()
			}
		}()
	}
	if !poll.Until(wait, 10*time.Millisecond, func() bool { return p.Stats().Forwarded >= 8 }) {
		t.Fatalf("stats %+v: the clients never got through", p.Stats())
	}
	for _, mode := range []Mode{Refuse, Blackhole} {
		p.Cut(mode)
		cutAt := time.Now()
		// Let the clients try for a while (observing, not synchronising): then no answered
		// request may have been sent after the cut.
		<-time.After(quiet)
		mu.Lock()
		last := lastEcho
		mu.Unlock()
		if last.After(cutAt) {
			t.Fatalf("%v: an echo %v after the cut", mode, last.Sub(cutAt))
		}
		p.Heal()
		healed := time.Now()
		if !poll.Until(wait, 10*time.Millisecond, func() bool {
			mu.Lock()
			defer mu.Unlock()
			return lastEcho.After(healed)
		}) {
			t.Fatalf("%v: no echo after the heal", mode)
		}
	}
	close(stop)
	wg.Wait()
}

func TestUnreachableTarget(t *testing.T) {
	// A target nobody listens on: the client's connection is reset, counted as failed.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	target := ln.Addr().String()
	ln.Close()
	p := start(t, target)
	if err := tryEcho(t, p.Addr(), wait); err == nil || timedOut(err) {
		t.Fatalf("through a proxy to a dead target: %v, want the connection to end", err)
	}
	if s := p.Stats(); s.Failed != 1 {
		t.Fatalf("stats %+v, want 1 failed", s)
	}
}

func TestCloseEndsEverything(t *testing.T) {
	p, err := New("127.0.0.1:0", echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	fwd := dial(t, p.Addr())
	mustEcho(t, fwd, "up")
	p.Cut(Blackhole)
	held := dial(t, p.Addr())
	if !poll.Until(wait, 10*time.Millisecond, func() bool { return p.Stats().Held == 1 }) {
		t.Fatalf("stats %+v, want 1 held", p.Stats())
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := held.roundTrip("x", wait); err == nil || timedOut(err) {
		t.Fatalf("a held connection after Close: %v, want it closed", err)
	}
	if _, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
		t.Fatal("the closed proxy still accepts")
	}
}

func TestModeString(t *testing.T) {
	for m, want := range map[Mode]string{Refuse: "refuse", Blackhole: "blackhole", Mode(7): "mode(7)"} {
		if m.String() != want {
			t.Errorf("%d: %q, want %q", int(m), m.String(), want)
		}
	}
}
