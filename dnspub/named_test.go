package dnspub_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/regentdb/regent/dnspub"
	"github.com/regentdb/regent/dnstest"
	"github.com/regentdb/regent/fsm"
)

// These tests run against a real BIND named (package dnstest); they skip when it is missing and
// fail under CI=true.

// update returns an Update for record "db" in srv's zone.
func update(srv *dnstest.Server, target, prev, next string) dnspub.Update {
	return dnspub.Update{
		Server:    srv.Addr(),
		Zone:      srv.Zone(),
		Record:    srv.Name("db"),
		TTL:       30,
		Target:    target,
		PrevToken: prev,
		NewToken:  next,
		Key:       srv.Key(),
	}
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// state is what the server holds for the record: its targets, its token and the zone's serial.
type state struct {
	targets []string
	token   string
	serial  uint32
}

func readState(t *testing.T, srv *dnstest.Server) state {
	t.Helper()
	targets, token, err := dnspub.Lookup(ctxFor(t), srv.Addr(), srv.Name("db"))
	if err != nil {
		t.Fatalf("Lookup: %v", err)
	}
	soa := srv.Query(t, "@", dns.TypeSOA)
	if len(soa) != 1 {
		t.Fatalf("SOA query answered %v", soa)
	}
	return state{targets: targets, token: token, serial: soa[0].(*dns.SOA).Serial}
}

func wantState(t *testing.T, srv *dnstest.Server, targets []string, token string) state {
	t.Helper()
	s := readState(t, srv)
	if !slices.Equal(s.targets, targets) || s.token != token {
		t.Fatalf("server holds targets %q token %q; want %q %q", s.targets, s.token, targets, token)
	}
	return s
}

func TestPublishMovesRecordAndToken(t *testing.T) {
	srv := dnstest.Start(t, dnstest.Options{})
	ctx := ctxFor(t)
	t1, t2, t3 := fsm.DNSToken(1, 1), fsm.DNSToken(2, 2), fsm.DNSToken(3, 3)

	// First publish: no token yet.
	if err := dnspub.Publish(ctx, update(srv, "192.0.2.10", "", t1)); err != nil {
		t.Fatalf("first Publish: %v", err)
	}
	wantState(t, srv, []string{"192.0.2.10"}, t1)
	a := srv.Query(t, "db", dns.TypeA)
	if len(a) != 1 || a[0].(*dns.A).A.String() != "192.0.2.10" || a[0].Header().Ttl != 30 {
		t.Fatalf("A query answered %v; want db 30 A 192.0.2.10", a)
	}
	if dig, err := exec.LookPath("dig"); err != nil {
		t.Logf("dig not found (apt-get install bind9-dnsutils); checked with the library only")
	} else {
		host, port, _ := net.SplitHostPort(srv.Addr())
		out, err := exec.CommandContext(ctx, dig, "@"+host, "-p", port, srv.Name("db"), "A", "+short").CombinedOutput()
		if err != nil {
			t.Fatalf("dig: %v\n%s", err, out)
		}
		if got := strings.TrimSpace(string(out)); got != "192.0.2.10" {
			t.Fatalf("dig @%s -p %s %s A +short printed %q; want 192.0.2.10", host, port, srv.Name("db"), got)
		}
	}

	// Second publish, with the right token: the A record becomes an AAAA.
	if err := dnspub.Publish(ctx, update(srv, "2001:db8::10", t1, t2)); err != nil {
		t.Fatalf("second Publish: %v", err)
	}
	wantState(t, srv, []string{"2001:db8::10"}, t2)

	// Third, to a host name: a CNAME replaces the address.
	if err := dnspub.Publish(ctx, update(srv, "pg-2.example.net", t2, t3)); err != nil {
		t.Fatalf("third Publish: %v", err)
	}
	wantState(t, srv, []string{"pg-2.example.net."}, t3)
	if tok := srv.Query(t, dnspub.TokenName(srv.Name("db")), dns.TypeTXT); len(tok) != 1 || tok[0].Header().Ttl != 30 {
		t.Fatalf("token TXT answered %v; want one record with TTL 30", tok)
	}

	// And back to an IPv4 address, from the CNAME.
	if err := dnspub.Publish(ctx, update(srv, "192.0.2.11", t3, fsm.DNSToken(3, 4))); err != nil {
		t.Fatalf("fourth Publish: %v", err)
	}
	wantState(t, srv, []string{"192.0.2.11"}, fsm.DNSToken(3, 4))
}

func TestPublishRetryAfterLostAnswerSucceeds(t *testing.T) {
	srv := dnstest.Start(t, dnstest.Options{})
	ctx := ctxFor(t)
	u := update(srv, "192.0.2.20", "", fsm.DNSToken(1, 1))
	if err := dnspub.Publish(ctx, u); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	before := readState(t, srv)
	// The same update again, as a new leader resuming the saga would send it.
	if err := dnspub.Publish(ctx, u); err != nil {
		t.Fatalf("Publish retried: %v; want nil (it was applied already)", err)
	}
	if after := readState(t, srv); after.serial != before.serial {
		t.Fatalf("the retry changed the zone: serial %d -> %d", before.serial, after.serial)
	}
	// The same token with another target is not a retry.
	u.Target = "192.0.2.21"
	if err := dnspub.Publish(ctx, u); !errors.Is(err, dnspub.ErrStaleToken) {
		t.Fatalf("Publish with the same token to another target: %v; want ErrStaleToken", err)
	}
}

func TestPublishStaleTokenChangesNothing(t *testing.T) {
	srv := dnstest.Start(t, dnstest.Options{})
	ctx := ctxFor(t)
	t1, t2 := fsm.DNSToken(1, 1), fsm.DNSToken(2, 5)
	if err := dnspub.Publish(ctx, update(srv, "192.0.2.10", "", t1)); err != nil {
		t.Fatal(err)
	}
	if err := dnspub.Publish(ctx, update(srv, "192.0.2.20", t1, t2)); err != nil {
		t.Fatal(err)
	}
	before := wantState(t, srv, []string{"192.0.2.20"}, t2)

	for _, tc := range []struct {
		name string
		u    dnspub.Update
	}{
		{"old leader with the previous token", update(srv, "192.0.2.10", t1, fsm.DNSToken(1, 2))},
		{"token never published", update(srv, "2001:db8::1", fsm.DNSToken(9, 9), fsm.DNSToken(9, 10))},
		{"first publish when a token exists", update(srv, "old-primary.example.net", "", fsm.DNSToken(1, 1))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := dnspub.Publish(ctx, tc.u)
			if !errors.Is(err, dnspub.ErrStaleToken) {
				t.Fatalf("Publish: %v; want ErrStaleToken", err)
			}
			for _, want := range []string{"newer leader", t2, "192.0.2.20"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
			t.Logf("refused: %v", err)
			after := readState(t, srv)
			if !slices.Equal(after.targets, before.targets) || after.token != before.token || after.serial != before.serial {
				t.Fatalf("a refused update changed the zone: %+v -> %+v", before, after)
			}
		})
	}
}

func TestPublishConcurrentLeadersOneWins(t *testing.T) {
	srv := dnstest.Start(t, dnstest.Options{})
	ctx := ctxFor(t)
	t1 := fsm.DNSToken(1, 1)
	if err := dnspub.Publish(ctx, update(srv, "192.0.2.1", "", t1)); err != nil {
		t.Fatal(err)
	}
	const n = 8
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			errs[i] = dnspub.Publish(ctx, update(srv, fmt.Sprintf("192.0.2.%d", 100+i), t1, fsm.DNSToken(2, uint64(10+i))))
		})
	}
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner < 0:
			winner = i
		case err == nil:
			t.Fatalf("updates %d and %d both succeeded with the same previous token", winner, i)
		case !errors.Is(err, dnspub.ErrStaleToken):
			t.Fatalf("update %d: %v; want nil or ErrStaleToken", i, err)
		}
	}
	if winner < 0 {
		t.Fatalf("no update succeeded: %v", errs)
	}
	wantState(t, srv, []string{fmt.Sprintf("192.0.2.%d", 100+winner)}, fsm.DNSToken(2, uint64(10+winner)))
}

func TestPublishBadKeyChangesNothing(t *testing.T) {
	srv := dnstest.Start(t, dnstest.Options{})
	ctx := ctxFor(t)
	t1 := fsm.DNSToken(1, 1)
	if err := dnspub.Publish(ctx, update(srv, "192.0.2.10", "", t1)); err != nil {
		t.Fatal(err)
	}
	before := readState(t, srv)

	wrongSecret := srv.Key()
	wrongSecret.Secret = "d3Jvbmcgc2VjcmV0IHdyb25nIHNlY3JldCB3cm9uZyE="
	unknownKey := srv.Key()
	unknownKey.Name = "someone-else"
	wrongAlg := srv.Key()
	wrongAlg.Algorithm = "hmac-sha512"
	for _, tc := range []struct {
		name string
		key  dnspub.Key
	}{
		{"wrong secret", wrongSecret},
		{"unknown key name", unknownKey},
		{"wrong algorithm", wrongAlg},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := update(srv, "192.0.2.66", t1, fsm.DNSToken(2, 2))
			u.Key = tc.key
			err := dnspub.Publish(ctx, u)
			if !errors.Is(err, dnspub.ErrAuth) {
				t.Fatalf("Publish: %v; want ErrAuth", err)
			}
			if !strings.Contains(err.Error(), "dns_keys") {
				t.Errorf("error %q does not point at dns_keys", err)
			}
			if strings.Contains(err.Error(), tc.key.Secret) || strings.Contains(err.Error(), srv.Key().Secret) {
				t.Errorf("error %q contains a secret", err)
			}
			t.Logf("refused: %v", err)
			after := readState(t, srv)
			if !slices.Equal(after.targets, before.targets) || after.token != before.token || after.serial != before.serial {
				t.Fatalf("an unauthenticated update changed the zone: %+v -> %+v", before, after)
			}
		})
	}
}

func TestPublishZoneNotServed(t *testing.T) {
	srv := dnstest.Start(t, dnstest.Options{})
	u := update(srv, "192.0.2.10", "", fsm.DNSToken(1, 1))
	u.Zone = "other.test."
	u.Record = "db.other.test."
	err := dnspub.Publish(ctxFor(t), u)
	if !errors.Is(err, dnspub.ErrAuth) && !errors.Is(err, dnspub.ErrRefused) {
		t.Fatalf("Publish to a zone the server does not serve: %v; want ErrAuth or ErrRefused", err)
	}
	t.Logf("zone not served: %v", err)
}

func TestPublishCNAMEReplacesOtherData(t *testing.T) {
	// A server ignores a CNAME added beside other data and still answers NOERROR; Publish must
	// not leave the name pointing nowhere.
	srv := dnstest.Start(t, dnstest.Options{Records: []string{`db IN TXT "left by an operator"`, "db IN A 192.0.2.5"}})
	if err := dnspub.Publish(ctxFor(t), update(srv, "pg-2.example.net.", "", fsm.DNSToken(1, 1))); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	wantState(t, srv, []string{"pg-2.example.net."}, fsm.DNSToken(1, 1))
	for _, rr := range srv.Query(t, "db", dns.TypeTXT) {
		if rr.Header().Rrtype != dns.TypeCNAME {
			t.Fatalf("TXT query at the CNAME's name answered %v; want only the CNAME", rr)
		}
	}
}

func TestPublishRefused(t *testing.T) {
	srv := dnstest.Start(t, dnstest.Options{ReadOnly: true})
	err := dnspub.Publish(ctxFor(t), update(srv, "192.0.2.10", "", fsm.DNSToken(1, 1)))
	if !errors.Is(err, dnspub.ErrRefused) || !strings.Contains(err.Error(), "allow-update") {
		t.Fatalf("Publish to a zone that allows no update: %v; want ErrRefused naming allow-update", err)
	}
	wantState(t, srv, nil, "")
}

func TestPublishOtherAlgorithms(t *testing.T) {
	for _, alg := range []string{"hmac-sha512", "hmac-sha1"} {
		t.Run(alg, func(t *testing.T) {
			srv := dnstest.Start(t, dnstest.Options{Zone: "corp.test", KeyName: "witness-key", Algorithm: alg})
			if srv.Zone() != "corp.test." || srv.Key().Name != "witness-key" || srv.Key().Algorithm != alg {
				t.Fatalf("server zone %q key %v", srv.Zone(), srv.Key())
			}
			if err := dnspub.Publish(ctxFor(t), update(srv, "198.51.100.7", "", fsm.DNSToken(4, 1))); err != nil {
				t.Fatalf("Publish: %v", err)
			}
			wantState(t, srv, []string{"198.51.100.7"}, fsm.DNSToken(4, 1))
		})
	}
}

// blackHole accepts TCP connections on loopback and never answers; accepted receives each one.
func blackHole(t *testing.T) (addr string, accepted <-chan struct{}) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan struct{}, 16)
	var conns []net.Conn
	var mu sync.Mutex
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().String(), ch
}

// deadServerUpdate is a well-formed update for a server that never answers.
func deadServerUpdate(addr string) dnspub.Update {
	return dnspub.Update{
		Server: addr, Zone: "example.test.", Record: "db.example.test.", TTL: 30, Target: "192.0.2.1",
		NewToken: fsm.DNSToken(1, 1),
		Key:      dnspub.Key{Name: "regent-key", Secret: "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"},
	}
}

// The bound below is far above the context's timeout and far below the 15s each exchange would
// otherwise wait: it checks that ctx, not a built-in timeout, ended the call.
const prompt = 5 * time.Second

func TestPublishDeadServerObeysContextDeadline(t *testing.T) {
	addr, _ := blackHole(t)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := dnspub.Publish(ctx, deadServerUpdate(addr))
	if took := time.Since(start); took > prompt {
		t.Fatalf("Publish returned after %v; want about 200ms", took)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Publish: %v; want an error wrapping context.DeadlineExceeded", err)
	}

	ctx2, cancel2 := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel2()
	start = time.Now()
	if _, _, err := dnspub.Lookup(ctx2, addr, "db.example.test."); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lookup: %v; want an error wrapping context.DeadlineExceeded", err)
	}
	if took := time.Since(start); took > prompt {
		t.Fatalf("Lookup returned after %v; want about 200ms", took)
	}
}

func TestPublishDeadServerObeysCancel(t *testing.T) {
	addr, accepted := blackHole(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- dnspub.Publish(ctx, deadServerUpdate(addr)) }()
	select {
	case <-accepted:
	case err := <-errc:
		t.Fatalf("Publish returned before the server accepted: %v", err)
	}
	start := time.Now()
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Publish: %v; want an error wrapping context.Canceled", err)
		}
	case <-time.After(prompt):
		t.Fatalf("Publish still running %v after its context was cancelled", time.Since(start))
	}
}

func TestPublishNoServerListening(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	err = dnspub.Publish(ctxFor(t), deadServerUpdate(addr))
	if err == nil || errors.Is(err, dnspub.ErrStaleToken) || errors.Is(err, dnspub.ErrAuth) || !strings.Contains(err.Error(), addr) {
		t.Fatalf("Publish to a closed port: %v; want a network error naming %s", err, addr)
	}
}
