package probe

import (
	"context"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestBackoffGrowsWithJitterAndCaps(t *testing.T) {
	if d := backoff(1); d != 0 {
		t.Errorf("after one failure: %v, want an immediate retry", d)
	}
	for n := 2; n < 40; n++ {
		want := min(backoffBase<<min(n-2, 10), backoffMax)
		lo, hi := time.Duration(float64(want)*0.8), time.Duration(float64(want)*1.2)
		for range 50 {
			if d := backoff(n); d < lo || d > hi {
				t.Fatalf("after %d failures: %v, want within [%v, %v]", n, d, lo, hi)
			}
		}
	}
}

// A server that drops every connection is not hammered: attempts back off while probes keep
// reporting it unreachable with the last connection error.
func TestRefusedConnectionsBackOff(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var accepted atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	p := NewProber(Options{Timeout: 300 * time.Millisecond})
	defer p.Close()
	tg := Target{Cluster: "c", Node: "n", Host: "127.0.0.1", Port: uint16(ln.Addr().(*net.TCPAddr).Port), User: "regent", SSLMode: "disable"}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const probes = 30
	start := time.Now()
	backedOff := 0
	for i := range probes {
		r := p.Probe(ctx, tg)
		if r.Reachable || r.Err == nil {
			t.Fatalf("probe %d of a server that drops connections: reachable %v err %v", i, r.Reachable, r.Err)
		}
		if strings.Contains(r.Err.Error(), "failed connection attempts in a row") {
			backedOff++
		}
	}
	elapsed := time.Since(start)
	// Within elapsed, the backoff allows 2 immediate attempts and then one per doubling wait
	// from 80ms (the lowest jittered base): a bound that holds whatever the machine's speed.
	// pgx may open a second TCP connection within one attempt (it retries some early EOFs).
	allowed := int64(2)
	for d, spent := backoffBase*8/10, time.Duration(0); spent <= elapsed; d = min(2*d, backoffMax) {
		spent += d
		allowed++
	}
	if n := accepted.Load(); n > 2*allowed || n < 2 {
		t.Errorf("%d probes in %v made %d TCP connections; want 2..%d (backoff)", probes, elapsed, n, 2*allowed)
	}
	if backedOff == 0 {
		t.Errorf("no probe reported the backoff (the last connection error and when the next attempt is due)")
	}
}
