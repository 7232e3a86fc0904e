// Package dnstest runs a real BIND named on loopback for tests and local tools: one primary zone
// that accepts RFC 2136 updates signed with a fresh random TSIG key, started in a new directory
// and stopped (its directory removed) when the test ends — or, with New, when the caller calls
// Stop (`regent lab` and the failover benchmark use New).
//
// named runs in the foreground (-g) as the user running the tests, root included: -u is not
// passed, so named never switches to the bind user and needs no permissions beyond the test's own
// temporary directory. Debian ships an AppArmor profile for /usr/sbin/named that only lets it read
// /etc/bind and write /var/cache/bind, /var/lib/bind and a few more; where that profile is loaded
// in enforce mode, Start and New put its files under /var/cache/bind instead of a temporary
// directory. On this project's machines (containers) AppArmor is not enabled in the kernel, so a
// temporary directory (or Options.Dir) is used.
package dnstest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/regentdb/regent/dnspub"
	"github.com/regentdb/regent/internal/freeport"
)

// ErrNoNamed means BIND's named was not found.
var ErrNoNamed = errors.New("dnstest: BIND's named not found (install it with: apt-get install bind9)")

// EnvNamed names an environment variable that, when set, is the only named binary Start uses.
const EnvNamed = "DNSTEST_NAMED"

// startTimeout bounds how long Start waits for named to answer.
const startTimeout = 30 * time.Second

// stopTimeout is how long Stop waits after SIGTERM before it kills named.
const stopTimeout = 10 * time.Second

// Options tune a test DNS server. The zero value is usable.
type Options struct {
	// Zone is the zone served and updatable; "example.test." when empty.
	Zone string
	// KeyName is the TSIG key allowed to update the zone; "regent-key" when empty.
	KeyName string
	// Algorithm is the key's algorithm: hmac-sha256 (default), hmac-sha512 or hmac-sha1.
	Algorithm string
	// Records are extra zone-file lines (names relative to the zone), e.g. "db 60 IN A 192.0.2.1".
	Records []string
	// ReadOnly makes the zone refuse every update (allow-update { none; }), for testing refusals.
	ReadOnly bool
	// Dir is the directory under which named's own directory is made; os.TempDir() when empty.
	// (Where AppArmor confines named, its directory goes under /var/cache/bind instead.)
	Dir string
}

// Server is a running named serving one zone on 127.0.0.1.
type Server struct {
	zone string
	key  dnspub.Key
	addr string
	dir  string

	cmd     *exec.Cmd
	done    chan struct{} // closed when named has exited
	waitErr error         // named's exit status, set before done closes
	log     *syncBuffer

	stopOnce sync.Once
}

// FindNamed returns the path of BIND's named: $DNSTEST_NAMED when set (and then only it), else
// named on PATH, else /usr/sbin/named. Its error wraps ErrNoNamed.
func FindNamed() (string, error) {
	if p := os.Getenv(EnvNamed); p != "" {
		if isExecutable(p) {
			return p, nil
		}
		return "", fmt.Errorf("%w: %s=%s is not an executable file", ErrNoNamed, EnvNamed, p)
	}
	if p, err := exec.LookPath("named"); err == nil {
		return p, nil
	}
	if isExecutable("/usr/sbin/named") {
		return "/usr/sbin/named", nil
	}
	return "", fmt.Errorf("%w: not on PATH nor at /usr/sbin/named", ErrNoNamed)
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// RequireNamed returns named's path, or skips the test naming what is missing and how to install
// it — or fails it when the environment says CI=true.
func RequireNamed(t testing.TB) string {
	t.Helper()
	p, err := FindNamed()
	if err != nil {
		if os.Getenv("CI") != "true" {
			t.Skipf("skipping: %v", err)
		} else {
			t.Fatalf("named is required (CI=true): %v", err)
		}
		return ""
	}
	return p
}

// Start runs named for the test and stops it (and removes its files) when the test ends; when
// the test failed, named's log is written to the test log. It skips the test when named is
// missing (fails it under CI=true) and fails it when named does not start.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	named := RequireNamed(t)
	if named == "" {
		return nil // reached only with a testing.TB whose Skipf and Fatalf return
	}
	s, err := start(named, opts)
	if err != nil {
		t.Fatalf("dnstest: %v", err)
		return nil
	}
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("--- named's log (%s, %s):\n%s", s.addr, s.dir, tail(s.Log(), 16000))
		}
	})
	return s
}

// New runs named outside a test, for programs such as `regent lab` and benchmarks: it finds
// named (FindNamed; the error wraps ErrNoNamed when it is missing), writes its files into a new
// directory under opts.Dir and waits until named answers for the zone. The caller must call
// Stop, which stops named and removes that directory.
func New(opts Options) (*Server, error) {
	named, err := FindNamed()
	if err != nil {
		return nil, err
	}
	s, err := start(named, opts)
	if err != nil {
		return nil, fmt.Errorf("dnstest: %w", err)
	}
	return s, nil
}

// start writes named's files into a new directory and runs it, on another port when the first
// one was taken meanwhile. On error nothing is left running and the directory is removed.
func start(named string, opts Options) (*Server, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	dir, err := workDir(opts.Dir)
	if err != nil {
		return nil, err
	}
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("generating a TSIG secret: %w", err)
	}
	key := dnspub.Key{Name: opts.KeyName, Algorithm: opts.Algorithm, Secret: base64.StdEncoding.EncodeToString(secret)}

	// Another process may take the free port between our check and named's bind: try again with
	// another port when named says so.
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port, err := freeport.Get()
		if err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		s := &Server{zone: opts.Zone, key: key, addr: net.JoinHostPort("127.0.0.1", fmt.Sprint(port)), dir: dir}
		if err := s.writeFiles(opts, port); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		err = s.start(named)
		if err == nil {
			return s, nil
		}
		s.stopNamed()
		lastErr = fmt.Errorf("%w\n--- named's log:\n%s", err, tail(s.Log(), 16000))
		if !strings.Contains(s.Log(), "address in use") {
			break
		}
	}
	os.RemoveAll(dir)
	return nil, lastErr
}

// withDefaults fills in the defaults and checks the options.
func (o Options) withDefaults() (Options, error) {
	if o.Zone == "" {
		o.Zone = "example.test."
	}
	if _, ok := dns.IsDomainName(o.Zone); !ok || o.Zone == "." || strings.ContainsAny(o.Zone, "\"\\ ;{}") {
		return o, fmt.Errorf("zone %q is not a domain name below the root", o.Zone)
	}
	o.Zone = dns.CanonicalName(o.Zone)
	if o.KeyName == "" {
		o.KeyName = "regent-key"
	}
	if _, ok := dns.IsDomainName(o.KeyName); !ok || strings.ContainsAny(o.KeyName, "\" ;{}") {
		return o, fmt.Errorf("key name %q is not a domain name", o.KeyName)
	}
	if o.Algorithm == "" {
		o.Algorithm = "hmac-sha256"
	}
	switch o.Algorithm {
	case "hmac-sha256", "hmac-sha512", "hmac-sha1":
	default:
		return o, fmt.Errorf("algorithm %q: use hmac-sha256, hmac-sha512 or hmac-sha1", o.Algorithm)
	}
	return o, nil
}

// workDir returns a fresh directory for named's files, which Stop removes: one under parent
// (os.TempDir() when empty), or under /var/cache/bind when AppArmor confines named.
func workDir(parent string) (string, error) {
	if !apparmorConfinesNamed() {
		d, err := os.MkdirTemp(parent, "regent-dnstest-")
		if err != nil {
			return "", fmt.Errorf("making a directory for named's files: %w (set Options.Dir to a writable directory)", err)
		}
		return d, nil
	}
	d, err := os.MkdirTemp("/var/cache/bind", "regent-dnstest-")
	if err != nil {
		return "", fmt.Errorf("AppArmor confines named to /var/cache/bind and friends, and making a directory there failed: %w (run as root, or put the named profile in complain mode: aa-complain /usr/sbin/named)", err)
	}
	return d, nil
}

// apparmorConfinesNamed says whether an AppArmor profile for named is loaded in enforce mode.
func apparmorConfinesNamed() bool {
	b, err := os.ReadFile("/sys/kernel/security/apparmor/profiles")
	if err != nil {
		return false // AppArmor is off, or not readable: nothing confines named
	}
	return profilesEnforceNamed(string(b))
}

// profilesEnforceNamed reads the kernel's list of AppArmor profiles, lines such as
// "named (enforce)" or "/usr/sbin/named (complain)".
func profilesEnforceNamed(profiles string) bool {
	for _, line := range strings.Split(profiles, "\n") {
		name, mode, ok := strings.Cut(strings.TrimSpace(line), " ")
		if ok && (name == "named" || name == "/usr/sbin/named") && mode == "(enforce)" {
			return true
		}
	}
	return false
}

// writeFiles writes named.conf and the zone file for a server listening on port.
func (s *Server) writeFiles(o Options, port int) error {
	zoneName := strings.TrimSuffix(o.Zone, ".")
	allow := fmt.Sprintf("key %q;", o.KeyName)
	if o.ReadOnly {
		allow = "none;"
	}
	conf := fmt.Sprintf(`// Written by regent's dnstest for one test; removed when it ends.
options {
	directory %[1]q;
	pid-file none;
	session-keyfile none;
	listen-on port %[2]d { 127.0.0.1; };
	listen-on-v6 { none; };
	recursion no;
	dnssec-validation no;
	notify no;
	max-journal-size unlimited;
};
controls { };
key %[3]q {
	algorithm %[4]s;
	secret %[5]q;
};
zone %[6]q {
	type primary;
	file "zone.db";
	allow-update { %[7]s };
};
`, s.dir, port, o.KeyName, o.Algorithm, s.key.Secret, zoneName, allow)
	zone := fmt.Sprintf(`$ORIGIN %[1]s
$TTL 60
@	IN SOA	ns.%[1]s hostmaster.%[1]s 1 3600 600 86400 60
@	IN NS	ns.%[1]s
ns	IN A	127.0.0.1
%[2]s
`, o.Zone, strings.Join(o.Records, "\n"))
	if err := os.WriteFile(filepath.Join(s.dir, "named.conf"), []byte(conf), 0o600); err != nil {
		return fmt.Errorf("writing named.conf: %w", err)
	}
	// Remove what an earlier attempt left (journal of a zone that was never served).
	os.Remove(filepath.Join(s.dir, "zone.db.jnl"))
	if err := os.WriteFile(filepath.Join(s.dir, "zone.db"), []byte(zone), 0o600); err != nil {
		return fmt.Errorf("writing the zone file: %w", err)
	}
	return nil
}

// start runs named and waits until it answers authoritatively for the zone, or exits, or
// startTimeout passes.
func (s *Server) start(named string) error {
	s.log = &syncBuffer{}
	s.done = make(chan struct{})
	// -g: foreground, log to stderr; -4: IPv4 only; -n 1: one worker thread is plenty.
	s.cmd = exec.Command(named, "-g", "-4", "-n", "1", "-c", filepath.Join(s.dir, "named.conf"))
	s.cmd.Dir = s.dir
	s.cmd.Stdout = s.log
	s.cmd.Stderr = s.log
	s.cmd.SysProcAttr = sysProcAttr()
	if err := s.cmd.Start(); err != nil {
		close(s.done)
		return fmt.Errorf("starting %s: %w", named, err)
	}
	go func() {
		s.waitErr = s.cmd.Wait()
		close(s.done)
	}()

	deadline := time.Now().Add(startTimeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		if lastErr = s.answersSOA(); lastErr == nil {
			return nil
		}
		if log := s.log.String(); strings.Contains(log, "not loaded due to errors") {
			return fmt.Errorf("named could not load zone %s: see its log below, and the zone file %s", s.zone, filepath.Join(s.dir, "zone.db"))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("named did not answer an SOA query for %s at %s within %v: %v", s.zone, s.addr, startTimeout, lastErr)
		}
		select {
		case <-s.done:
			return fmt.Errorf("named exited before it answered (%v)", s.waitErr)
		case <-tick.C:
		}
	}
}

// answersSOA asks named for the zone's SOA once, over UDP.
func (s *Server) answersSOA() error {
	q := new(dns.Msg)
	q.SetQuestion(s.zone, dns.TypeSOA)
	q.RecursionDesired = false
	c := &dns.Client{Net: "udp", Timeout: 250 * time.Millisecond}
	r, _, err := c.Exchange(q, s.addr)
	if err != nil {
		return err
	}
	if r.Rcode != dns.RcodeSuccess || !r.Authoritative || len(r.Answer) == 0 {
		return fmt.Errorf("answered %s (authoritative %v, %d answers)", dns.RcodeToString[r.Rcode], r.Authoritative, len(r.Answer))
	}
	return nil
}

// Stop stops named: SIGTERM, then SIGKILL if it has not exited within 10s. It waits for named to
// exit, then removes named's directory (Dir). It may be called more than once; Start's test
// cleanup calls it too.
func (s *Server) Stop() {
	s.stopOnce.Do(func() {
		s.stopNamed()
		if s.dir != "" {
			os.RemoveAll(s.dir)
		}
	})
}

// stopNamed ends the named process and waits for it.
func (s *Server) stopNamed() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	select {
	case <-s.done:
		return
	default:
	}
	_ = s.cmd.Process.Signal(terminate)
	timer := time.NewTimer(stopTimeout)
	defer timer.Stop()
	select {
	case <-s.done:
	case <-timer.C:
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}

// PID returns named's process id, or 0 when it was never started.
func (s *Server) PID() int {
	if s.cmd == nil || s.cmd.Process == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// Running reports whether named is still running.
func (s *Server) Running() bool {
	if s.done == nil {
		return false
	}
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// Addr returns the host:port named listens on (TCP and UDP), on 127.0.0.1.
func (s *Server) Addr() string { return s.addr }

// Zone returns the zone served, fully qualified and in lower case, e.g. "example.test.".
func (s *Server) Zone() string { return s.zone }

// Key returns the TSIG key allowed to update the zone.
func (s *Server) Key() dnspub.Key { return s.key }

// Dir returns the directory holding named.conf, the zone file and its journal.
func (s *Server) Dir() string { return s.dir }

// Log returns what named has logged so far.
func (s *Server) Log() string {
	if s.log == nil {
		return ""
	}
	return s.log.String()
}

// Name returns name made fully qualified: a name without a trailing dot is taken as relative to
// the zone ("db" is "db.example.test."), and "@" is the zone itself.
func (s *Server) Name(name string) string {
	switch {
	case name == "@" || name == "":
		return s.zone
	case dns.IsFqdn(name):
		return name
	default:
		return name + "." + s.zone
	}
}

// Query asks named for name's qtype records over TCP (name as in Name) and returns the answer
// section (empty when the name or type does not exist). It fails the test when the query fails
// or named answers anything but NOERROR or NXDOMAIN.
func (s *Server) Query(t testing.TB, name string, qtype uint16) []dns.RR {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion(s.Name(name), qtype)
	q.RecursionDesired = false
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := &dns.Client{Net: "tcp"}
	r, _, err := c.ExchangeContext(ctx, q, s.addr)
	if err != nil {
		t.Fatalf("dnstest: query %s %s at %s: %v", s.Name(name), dns.TypeToString[qtype], s.addr, err)
		return nil
	}
	if r.Rcode != dns.RcodeSuccess && r.Rcode != dns.RcodeNameError {
		t.Fatalf("dnstest: query %s %s at %s: answered %s", s.Name(name), dns.TypeToString[qtype], s.addr, dns.RcodeToString[r.Rcode])
		return nil
	}
	return r.Answer
}

// syncBuffer is a bytes.Buffer safe for named's output and concurrent readers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// tail returns the last n bytes of s, cut at a line start.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[len(s)-n:]
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return "...\n" + s
}
