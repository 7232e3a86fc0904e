package pgtest

import (
	"fmt"
	"net"
	"strconv"
	"sync"
)

// BlackHole is a TCP listener on 127.0.0.1 that accepts connections and
// never reads from or writes to them: a server that hangs. A client that
// connects to it waits until its own timeout.
type BlackHole struct {
	ln   net.Listener
	done chan struct{}

	mu     sync.Mutex
	conns  []net.Conn
	count  int
	closed bool
}

// NewBlackHole listens on a free loopback port. Close it when done.
func NewBlackHole() (*BlackHole, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("pgtest: black hole: listening on loopback: %w", err)
	}
	b := &BlackHole{ln: ln, done: make(chan struct{})}
	go b.accept()
	return b, nil
}

func (b *BlackHole) accept() {
	defer close(b.done)
	for {
		c, err := b.ln.Accept()
		if err != nil {
			return
		}
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			c.Close()
			return
		}
		b.conns = append(b.conns, c)
		b.count++
		b.mu.Unlock()
	}
}

// Host returns "127.0.0.1".
func (b *BlackHole) Host() string { return "127.0.0.1" }

// Port returns the port it listens on.
func (b *BlackHole) Port() int { return b.ln.Addr().(*net.TCPAddr).Port }

// Addr returns "127.0.0.1:port".
func (b *BlackHole) Addr() string { return net.JoinHostPort(b.Host(), strconv.Itoa(b.Port())) }

// Accepted returns how many connections it has accepted.
func (b *BlackHole) Accepted() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.count
}

// Close stops listening, closes every accepted connection and waits for
// its accepting goroutine to end.
func (b *BlackHole) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	conns := b.conns
	b.conns = nil
	b.mu.Unlock()
	err := b.ln.Close()
	for _, c := range conns {
		c.Close()
	}
	<-b.done
	return err
}
