package dnstest_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/regentdb/regent/dnspub"
	"github.com/regentdb/regent/dnstest"
)

func TestStartServesZone(t *testing.T) {
	srv := dnstest.Start(t, dnstest.Options{Records: []string{"db 120 IN A 192.0.2.1"}})
	host, _, err := net.SplitHostPort(srv.Addr())
	if err != nil || host != "127.0.0.1" {
		t.Fatalf("Addr() = %q; want 127.0.0.1:port", srv.Addr())
	}
	if srv.Zone() != "example.test." {
		t.Errorf("Zone() = %q; want example.test.", srv.Zone())
	}
	k := srv.Key()
	if raw, err := base64.StdEncoding.DecodeString(k.Secret); err != nil || len(raw) != 32 {
		t.Errorf("key secret: %d bytes, %v; want 32 random bytes in base64", len(raw), err)
	}
	if k.Name != "regent-key" || k.Algorithm != "hmac-sha256" {
		t.Errorf("Key() = %v; want regent-key hmac-sha256", k)
	}
	soa := srv.Query(t, "@", dns.TypeSOA)
	if len(soa) != 1 || soa[0].Header().Name != "example.test." {
		t.Fatalf("SOA query answered %v", soa)
	}
	if ns := srv.Query(t, "ns", dns.TypeA); len(ns) != 1 || ns[0].(*dns.A).A.String() != "127.0.0.1" {
		t.Fatalf("ns A answered %v", ns)
	}
	if db := srv.Query(t, "db.example.test.", dns.TypeA); len(db) != 1 || db[0].(*dns.A).A.String() != "192.0.2.1" || db[0].Header().Ttl != 120 {
		t.Fatalf("db A (from Options.Records) answered %v", db)
	}
	if none := srv.Query(t, "missing", dns.TypeA); len(none) != 0 {
		t.Fatalf("a missing name answered %v", none)
	}
}

func TestServersAreIndependent(t *testing.T) {
	a := dnstest.Start(t, dnstest.Options{})
	b := dnstest.Start(t, dnstest.Options{Zone: "Other.Test", KeyName: "k2", Algorithm: "hmac-sha512"})
	if a.Addr() == b.Addr() || a.Key().Secret == b.Key().Secret || a.Dir() == b.Dir() {
		t.Fatalf("two servers share an address, a secret or a directory: %s %s %s %s", a.Addr(), b.Addr(), a.Dir(), b.Dir())
	}
	if b.Zone() != "other.test." || b.Name("db") != "db.other.test." || b.Name("@") != "other.test." || b.Name("x.y.") != "x.y." {
		t.Fatalf("zone %q, names %q %q", b.Zone(), b.Name("db"), b.Name("@"))
	}
	// Each key updates its own server only.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	u := dnspub.Update{Server: b.Addr(), Zone: b.Zone(), Record: b.Name("db"), TTL: 5, Target: "192.0.2.2", NewToken: "regent term=1 event=1", Key: b.Key()}
	if err := dnspub.Publish(ctx, u); err != nil {
		t.Fatalf("Publish with the server's key: %v", err)
	}
	u.Key, u.PrevToken, u.NewToken = a.Key(), "regent term=1 event=1", "regent term=1 event=2"
	if err := dnspub.Publish(ctx, u); err == nil {
		t.Fatal("Publish with another server's key succeeded")
	}
}

func TestStopEndsNamed(t *testing.T) {
	srv := dnstest.Start(t, dnstest.Options{})
	srv.Stop()
	srv.Stop() // idempotent
	c := &dns.Client{Net: "tcp", Timeout: 2 * time.Second}
	q := new(dns.Msg)
	q.SetQuestion(srv.Zone(), dns.TypeSOA)
	if r, _, err := c.Exchange(q, srv.Addr()); err == nil {
		t.Fatalf("named still answers after Stop: %v", r)
	}
	if !strings.Contains(srv.Log(), "exiting") {
		t.Errorf("named's log does not show a clean shutdown:\n%s", srv.Log())
	}
}

// recordingTB records Skip, Fatal, Log and Cleanup calls instead of acting on them, and can
// pretend the test failed.
type recordingTB struct {
	testing.TB
	skipped, failed, pretendFailed bool
	msg                            string
	logs                           []string
	cleanups                       []func()
}

func (r *recordingTB) Helper() {}

func (r *recordingTB) Skipf(format string, args ...any) {
	if !r.skipped && !r.failed {
		r.skipped, r.msg = true, fmt.Sprintf(format, args...)
	}
}

func (r *recordingTB) Fatalf(format string, args ...any) {
	if !r.skipped && !r.failed {
		r.failed, r.msg = true, fmt.Sprintf(format, args...)
	}
}

func (r *recordingTB) Logf(format string, args ...any) {
	r.logs = append(r.logs, fmt.Sprintf(format, args...))
}

func (r *recordingTB) Cleanup(f func()) { r.cleanups = append(r.cleanups, f) }

func (r *recordingTB) Failed() bool { return r.failed || r.pretendFailed }

func (r *recordingTB) runCleanups() {
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
	r.cleanups = nil
}

func TestMissingNamedSkipsLocallyFailsUnderCI(t *testing.T) {
	t.Setenv(dnstest.EnvNamed, "/nonexistent/named")

	t.Setenv("CI", "")
	r := &recordingTB{TB: t}
	if s := dnstest.Start(r, dnstest.Options{}); s != nil || !r.skipped ||
		!strings.Contains(r.msg, "named") || !strings.Contains(r.msg, "apt-get install bind9") {
		t.Errorf("locally: skipped %v failed %v %q; want a skip naming named and how to install it", r.skipped, r.failed, r.msg)
	}

	t.Setenv("CI", "true")
	r = &recordingTB{TB: t}
	if s := dnstest.Start(r, dnstest.Options{}); s != nil || !r.failed || !strings.Contains(r.msg, "apt-get install bind9") {
		t.Errorf("under CI=true: skipped %v failed %v %q; want a failure", r.skipped, r.failed, r.msg)
	}
}

func TestBadZoneFailsWithLog(t *testing.T) {
	dnstest.RequireNamed(t)
	r := &recordingTB{TB: t}
	start := time.Now()
	s := dnstest.Start(r, dnstest.Options{Records: []string{"db IN A not-an-address"}})
	defer r.runCleanups()
	if s != nil || !r.failed {
		t.Fatalf("Start with a broken zone: server %v, failed %v; want a failure", s, r.failed)
	}
	if !strings.Contains(r.msg, "could not load zone") || !strings.Contains(r.msg, "not-an-address") {
		t.Errorf("failure %q does not say the zone failed to load, with named's log", r.msg)
	}
	t.Logf("failed after %v", time.Since(start))
}

func TestCleanupStopsNamedAndLogsOnFailure(t *testing.T) {
	dnstest.RequireNamed(t)
	r := &recordingTB{TB: t}
	s := dnstest.Start(r, dnstest.Options{})
	if s == nil {
		t.Fatalf("Start: %s", r.msg)
	}
	r.pretendFailed = true
	r.runCleanups()
	if len(r.logs) != 1 || !strings.Contains(r.logs[0], "named's log") || !strings.Contains(r.logs[0], "all zones loaded") {
		t.Fatalf("cleanup of a failed test logged %q; want named's log", r.logs)
	}
	c := &dns.Client{Net: "tcp", Timeout: 2 * time.Second}
	q := new(dns.Msg)
	q.SetQuestion(s.Zone(), dns.TypeSOA)
	if _, _, err := c.Exchange(q, s.Addr()); err == nil {
		t.Fatal("named still answers after the test's cleanup")
	}
}

func TestNewRunsWithoutATestAndStopRemovesItsFiles(t *testing.T) {
	dnstest.RequireNamed(t)
	parent := t.TempDir()
	srv, err := dnstest.New(dnstest.Options{Dir: parent, Records: []string{"db 5 IN A 127.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	if filepath.Dir(srv.Dir()) != parent {
		t.Errorf("Dir() = %s; want a directory under %s", srv.Dir(), parent)
	}
	if !srv.Running() || srv.PID() == 0 {
		t.Fatalf("running %v, pid %d", srv.Running(), srv.PID())
	}
	if db := srv.Query(t, "db", dns.TypeA); len(db) != 1 || db[0].(*dns.A).A.String() != "127.0.0.1" {
		t.Fatalf("db A answered %v", db)
	}
	srv.Stop()
	if srv.Running() {
		t.Error("named still running after Stop")
	}
	if _, err := os.Stat(srv.Dir()); !os.IsNotExist(err) {
		t.Errorf("named's directory %s left behind after Stop (%v)", srv.Dir(), err)
	}
}

func TestNewWithoutNamedSaysHowToInstallIt(t *testing.T) {
	t.Setenv(dnstest.EnvNamed, "/nonexistent/named")
	srv, err := dnstest.New(dnstest.Options{})
	if srv != nil || !errors.Is(err, dnstest.ErrNoNamed) || !strings.Contains(err.Error(), "apt-get install bind9") {
		t.Fatalf("New without named: %v, %v; want ErrNoNamed naming the package", srv, err)
	}
}

func TestNewWithABrokenZoneLeavesNothing(t *testing.T) {
	dnstest.RequireNamed(t)
	parent := t.TempDir()
	srv, err := dnstest.New(dnstest.Options{Dir: parent, Records: []string{"db IN A not-an-address"}})
	if srv != nil || err == nil || !strings.Contains(err.Error(), "could not load zone") {
		t.Fatalf("New with a broken zone: %v, %v", srv, err)
	}
	if left, _ := os.ReadDir(parent); len(left) != 0 {
		t.Errorf("a failed New left %v in %s", left, parent)
	}
}
