// Package cutproxy is a TCP proxy that a test can cut, to play a network partition on
// loopback: every path to a host goes through one Proxy per destination, and cutting them all
// cuts the host off.
//
// While healed, a Proxy forwards each connection it accepts to its target, byte for byte in
// both directions. Cut closes every forwarded connection at once (both sides) and then treats
// new connections by the Mode given:
//
//   - Refuse accepts and resets them at once (SO_LINGER 0): the client sees its connection
//     reset, as from a host whose firewall rejects it;
//   - Blackhole accepts them and never forwards nor answers: the client's reads hang until
//     its own timeout, as across a partition that drops packets.
//
// Heal forwards new connections again and closes the blackholed ones (their clients see them
// end and reconnect). No byte crosses a proxy between the return of Cut and the next Heal: a
// connection being set up while Cut runs is registered under the same lock Cut takes, so it is
// either closed by Cut or refused afterwards.
package cutproxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"
)

// Mode is what a cut Proxy does with a new connection.
type Mode int

const (
	// Refuse resets new connections at once.
	Refuse Mode = iota
	// Blackhole holds new connections open without forwarding or answering anything.
	Blackhole
)

// String names the mode.
func (m Mode) String() string {
	switch m {
	case Refuse:
		return "refuse"
	case Blackhole:
		return "blackhole"
	}
	return "mode(" + strconv.Itoa(int(m)) + ")"
}

// DialTimeout bounds how long a proxy waits to connect to its target.
const DialTimeout = 5 * time.Second

// Stats counts what a Proxy did with the connections it accepted.
type Stats struct {
	// Forwarded connections reached the target; Refused were reset by a Refuse cut; Held were
	// blackholed; Failed could not reach the target.
	Forwarded, Refused, Held, Failed int
}

// Proxy forwards the TCP connections accepted on its listen address to a target address until
// it is cut.
type Proxy struct {
	ln     net.Listener
	target string
	done   chan struct{}
	wg     sync.WaitGroup

	mu     sync.Mutex
	cut    bool
	mode   Mode
	closed bool
	links  map[*link]struct{}
	held   map[net.Conn]struct{}
	stats  Stats
}

// link is one forwarded connection: the accepted client side and the dialled target side.
type link struct{ client, server net.Conn }

func (l *link) close() {
	l.client.Close()
	l.server.Close()
}

// New listens on listen ("127.0.0.1:0" for any free loopback port) and forwards to target.
// Close it when done.
func New(listen, target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("cutproxy: listen on %s for %s: %w", listen, target, err)
	}
	p := &Proxy{ln: ln, target: target, done: make(chan struct{}),
		links: map[*link]struct{}{}, held: map[net.Conn]struct{}{}}
	go p.accept()
	return p, nil
}

// Addr returns the address the proxy listens on (host:port).
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Host returns the host part of Addr.
func (p *Proxy) Host() string { return p.ln.Addr().(*net.TCPAddr).IP.String() }

// Port returns the port of Addr.
func (p *Proxy) Port() int { return p.ln.Addr().(*net.TCPAddr).Port }

// Target returns the address the proxy forwards to.
func (p *Proxy) Target() string { return p.target }

// String describes the proxy as "listen→target".
func (p *Proxy) String() string { return p.Addr() + "→" + p.target }

// Cut closes every forwarded connection and, until Heal, refuses or blackholes new ones by
// mode. Cutting a cut proxy changes only the mode of later connections.
func (p *Proxy) Cut(mode Mode) {
	p.mu.Lock()
	p.cut, p.mode = true, mode
	links := p.links
	p.links = map[*link]struct{}{}
	p.mu.Unlock()
	for l := range links {
		l.close()
	}
}

// Heal forwards new connections again and closes the connections a Blackhole cut holds.
func (p *Proxy) Heal() {
	p.mu.Lock()
	p.cut = false
	held := p.held
	p.held = map[net.Conn]struct{}{}
	p.mu.Unlock()
	for c := range held {
		c.Close()
	}
}

// IsCut reports whether the proxy is cut.
func (p *Proxy) IsCut() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cut
}

// Stats returns the counts so far.
func (p *Proxy) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stats
}

// Close stops listening, closes every connection and waits for the proxy's goroutines.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	links, held := p.links, p.held
	p.links, p.held = map[*link]struct{}{}, map[net.Conn]struct{}{}
	p.mu.Unlock()
	err := p.ln.Close()
	for l := range links {
		l.close()
	}
	for c := range held {
		c.Close()
	}
	<-p.done
	p.wg.Wait()
	if err != nil {
		return fmt.Errorf("cutproxy: close %s: %w", p, err)
	}
	return nil
}

func (p *Proxy) accept() {
	defer close(p.done)
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// A transient accept error (too many open files): try again.
			continue
		}
		p.wg.Add(1)
		go p.serve(c)
	}
}

// serve refuses, holds or forwards one accepted connection.
func (p *Proxy) serve(c net.Conn) {
	defer p.wg.Done()
	if p.turnAway(c) {
		return
	}
	s, err := net.DialTimeout("tcp", p.target, DialTimeout)
	if err != nil {
		p.mu.Lock()
		p.stats.Failed++
		p.mu.Unlock()
		reset(c)
		return
	}
	l := &link{client: c, server: s}
	// Register under the lock Cut takes: a cut that ran while dialling is seen here.
	p.mu.Lock()
	if p.closed || p.cut {
		p.mu.Unlock()
		s.Close()
		if !p.turnAway(c) {
			c.Close() // healed again meanwhile: the client simply retries
		}
		return
	}
	p.links[l] = struct{}{}
	p.stats.Forwarded++
	p.mu.Unlock()

	var copies sync.WaitGroup
	copies.Add(2)
	pipe := func(dst, src net.Conn) {
		defer copies.Done()
		io.Copy(dst, src)
		// Either side ending ends the link (PostgreSQL and gRPC do not half-close).
		l.close()
	}
	go pipe(s, c)
	go pipe(c, s)
	copies.Wait()
	p.mu.Lock()
	delete(p.links, l)
	p.mu.Unlock()
}

// turnAway refuses or holds c when the proxy is cut or closed, and reports whether it did.
func (p *Proxy) turnAway(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.closed:
		c.Close()
	case !p.cut:
		return false
	case p.mode == Blackhole:
		p.held[c] = struct{}{}
		p.stats.Held++
	default:
		p.stats.Refused++
		reset(c)
	}
	return true
}

// reset closes c with a TCP reset rather than an orderly close.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}
