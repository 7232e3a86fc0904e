package pgtest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// DefaultPassword is SuperUser's password when Options.Password is empty.
const DefaultPassword = "regent-bench"

// Options configure a Bench. The zero value is a lone primary.
type Options struct {
	// Standbys is the number of streaming standbys New creates, named
	// standby1, standby2, ...
	Standbys int
	// Dir is the directory under which the bench's base directory is
	// created; default os.TempDir(). It must be traversable by the
	// postgres OS user when running as root.
	Dir string
	// BinDir holds the PostgreSQL programs; default FindBin().
	BinDir string
	// Password is SuperUser's password; default DefaultPassword.
	Password string
	// PasswordAuth makes TCP connections as SuperUser use scram-sha-256
	// password authentication; every other role, and Unix-socket
	// connections, are trusted.
	PasswordAuth bool
	// Settings are extra postgresql.conf settings (name → value, written
	// as is, so quote strings: "'on'" or "on" both work for booleans).
	Settings map[string]string
	// KeepDir leaves the base directory in place on Close, for debugging.
	KeepDir bool
	// Logf, when set, receives progress messages.
	Logf func(format string, args ...any)
}

// Bench is a set of PostgreSQL servers on loopback: a primary, its
// streaming standbys, and any unrelated primaries made with NewPrimary.
// Close stops them all and removes their files.
type Bench struct {
	// Dir is the base directory holding one directory per server.
	Dir string
	// Primary is the primary New created. It is not updated when a test
	// promotes a standby.
	Primary *Server
	// Standbys are the standbys made from Primary, in creation order.
	// AddStandby appends to it; do not call AddStandby concurrently with
	// reading it.
	Standbys []*Server

	binDir   string
	major    int
	runAs    runAs
	password string
	opts     Options

	mu      sync.Mutex
	servers []*Server
	closed  bool
}

// New creates a bench: a base directory, a primary made with initdb and
// started, the SuperUser role, then opts.Standbys standbys streaming from
// the primary. On error everything created so far is removed.
func New(ctx context.Context, opts Options) (*Bench, error) {
	bin := opts.BinDir
	if bin == "" {
		var err error
		if bin, err = FindBin(); err != nil {
			return nil, err
		}
	}
	ra, err := lookupRunAs()
	if err != nil {
		return nil, err
	}
	base, err := os.MkdirTemp(opts.Dir, "regent-pgtest-")
	if err != nil {
		return nil, fmt.Errorf("pgtest: creating the bench directory: %w", err)
	}
	if abs, err := filepath.Abs(base); err == nil {
		base = abs
	}
	b := &Bench{Dir: base, binDir: bin, runAs: ra, password: opts.Password, opts: opts}
	if b.password == "" {
		b.password = DefaultPassword
	}
	if err := b.setup(ctx); err != nil {
		b.Close()
		return nil, err
	}
	return b, nil
}

func (b *Bench) setup(ctx context.Context) error {
	// MkdirTemp makes 0700; the postgres user must be able to enter it.
	if err := os.Chmod(b.Dir, 0o755); err != nil {
		return fmt.Errorf("pgtest: making %s traversable: %w", b.Dir, err)
	}
	if err := b.runAs.chown(b.Dir); err != nil {
		return err
	}
	if b.runAs.root {
		if err := checkTraversable(b.Dir); err != nil {
			return err
		}
	}
	major, err := b.version(ctx)
	if err != nil {
		return err
	}
	b.major = major
	p, err := b.NewPrimary(ctx, "primary")
	if err != nil {
		return err
	}
	b.Primary = p
	for i := 1; i <= b.opts.Standbys; i++ {
		if _, err := b.AddStandby(ctx, fmt.Sprintf("standby%d", i)); err != nil {
			return err
		}
	}
	return nil
}

// checkTraversable fails when a directory above dir denies search
// permission to others, which would keep the postgres user out.
func checkTraversable(dir string) error {
	for d := filepath.Dir(dir); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return fmt.Errorf("pgtest: checking %s: %w", d, err)
		}
		if fi.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("pgtest: %s (mode %v) is not traversable by the postgres user, so it cannot reach %s; set Options.Dir to a directory under a world-traversable path such as /tmp", d, fi.Mode().Perm(), dir)
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

var versionRE = regexp.MustCompile(`\(PostgreSQL\) (\d+)`)

func (b *Bench) version(ctx context.Context) (int, error) {
	out, err := b.runAs.run(ctx, b.binDir, b.Dir, "postgres", "--version")
	if err != nil {
		return 0, err
	}
	m := versionRE.FindSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("pgtest: cannot read the version from `postgres --version`: %q", out)
	}
	major, _ := strconv.Atoi(string(m[1]))
	if major < 14 {
		return 0, fmt.Errorf("pgtest: PostgreSQL %d in %s is too old; the bench needs 14 or later", major, b.binDir)
	}
	return major, nil
}

// BinDir returns the directory holding the PostgreSQL programs in use.
func (b *Bench) BinDir() string { return b.binDir }

// MajorVersion returns the PostgreSQL major version in use, e.g. 15.
func (b *Bench) MajorVersion() int { return b.major }

// Password returns SuperUser's password.
func (b *Bench) Password() string { return b.password }

func (b *Bench) logf(format string, args ...any) {
	if b.opts.Logf != nil {
		b.opts.Logf(format, args...)
	}
}

// Run runs a PostgreSQL program from the bench's bin directory (for example
// "pg_rewind" or "pg_controldata") as the user PostgreSQL runs as, and
// returns its combined output.
func (b *Bench) Run(ctx context.Context, prog string, args ...string) ([]byte, error) {
	return b.runAs.run(ctx, b.binDir, b.Dir, prog, args...)
}

// Server returns the server called name, or nil.
func (b *Bench) Server(name string) *Server {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, s := range b.servers {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// Servers returns every server of the bench in creation order.
func (b *Bench) Servers() []*Server {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]*Server(nil), b.servers...)
}

var nameRE = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,40}$`)

// newServer reserves a name and makes the server's directory.
func (b *Bench) newServer(name string) (*Server, error) {
	if !nameRE.MatchString(name) {
		return nil, fmt.Errorf("pgtest: server name %q is invalid: use 1-41 lowercase letters, digits, '_' or '-', starting with a letter", name)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, errors.New("pgtest: the bench is closed")
	}
	for _, s := range b.servers {
		if s.Name == name {
			return nil, fmt.Errorf("pgtest: a server called %q already exists; pick another name", name)
		}
	}
	dir := filepath.Join(b.Dir, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, fmt.Errorf("pgtest: creating %s: %w", dir, err)
	}
	if err := b.runAs.chown(dir); err != nil {
		return nil, err
	}
	// Each server gets its own loopback address (127.0.0.1, 127.0.0.2, …), so that tests
	// can tell servers apart by address as well as port — e.g. a DNS record that moves from
	// the old primary to the new one.
	s := &Server{
		Name:    name,
		Host:    fmt.Sprintf("127.0.0.%d", len(b.servers)+1),
		Dir:     dir,
		DataDir: filepath.Join(dir, "data"),
		LogPath: filepath.Join(dir, "postgres.log"),
		b:       b,
	}
	b.servers = append(b.servers, s)
	return s, nil
}

// startNew starts a new server on a free port, retrying on other ports
// when one was taken in the meantime.
func (b *Bench) startNew(ctx context.Context, s *Server) error {
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		var port int
		if port, err = freePort(s.Host); err != nil {
			return err
		}
		s.Port = port
		if err = s.Start(ctx); err == nil || !errors.Is(err, errPortInUse) {
			return err
		}
		b.logf("pgtest: port %d of %s was taken, trying another", port, s.Name)
	}
	return err
}

// Ports handed out by this process, never handed out twice: a stopped
// server keeps its port for its next start.
var (
	portsMu   sync.Mutex
	portsUsed = map[int]bool{}
)

// freePort returns a TCP port on host (a loopback address) that was free a moment ago. It
// picks at random below the kernel's ephemeral range, where neither bind to
// port 0 (used by most other tests) nor outgoing connections take ports, so
// that another process is unlikely to grab the port, even while a killed
// server is down. When that range is too small it falls back to port 0.
func freePort(host string) (int, error) {
	portsMu.Lock()
	defer portsMu.Unlock()
	lo := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				lo = n
			}
		}
	}
	start := max(10000, lo-20000)
	for attempt := 0; attempt < 100 && lo-start >= 1000; attempt++ {
		port := start + rand.IntN(lo-start)
		if portsUsed[port] {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			continue
		}
		l.Close()
		portsUsed[port] = true
		return port, nil
	}
	for attempt := 0; attempt < 10; attempt++ {
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return 0, fmt.Errorf("pgtest: finding a free loopback port: %w", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !portsUsed[port] {
			portsUsed[port] = true
			return port, nil
		}
	}
	return 0, errors.New("pgtest: no free loopback port found")
}

// NewPrimary creates and starts a new primary with initdb: an unrelated
// cluster with its own system identifier. It has the SuperUser role and the
// bench's settings. New uses it for the bench's own primary; tests use it
// for "a server of another cluster".
func (b *Bench) NewPrimary(ctx context.Context, name string) (*Server, error) {
	s, err := b.newServer(name)
	if err != nil {
		return nil, err
	}
	b.logf("pgtest: initdb %s", s.DataDir)
	if _, err := b.Run(ctx, "initdb", "-D", s.DataDir, "-U", BootstrapUser, "--auth=trust",
		"--encoding=UTF8", "--locale=C", "--no-sync"); err != nil {
		return nil, err
	}
	if err := b.writeConfig(s); err != nil {
		return nil, err
	}
	if err := b.startNew(ctx, s); err != nil {
		return nil, err
	}
	c, err := s.connectAs(ctx, BootstrapUser, "postgres")
	if err != nil {
		return nil, err
	}
	defer c.Close(context.Background())
	if _, err := c.Exec(ctx, fmt.Sprintf("CREATE ROLE %s WITH SUPERUSER LOGIN REPLICATION PASSWORD '%s'",
		SuperUser, strings.ReplaceAll(b.password, "'", "''"))); err != nil {
		return nil, fmt.Errorf("pgtest: creating role %s on %s: %w", SuperUser, s, err)
	}
	b.logf("pgtest: %s is up (pid %d, data %s)", s, s.PID(), s.DataDir)
	return s, nil
}

// writeConfig appends the bench's settings to postgresql.conf and replaces
// pg_hba.conf.
func (b *Bench) writeConfig(s *Server) error {
	settings := map[string]string{
		"shared_buffers":               "16MB",
		"max_connections":              "40",
		"wal_level":                    "replica",
		"wal_log_hints":                "on",
		"max_wal_senders":              "10",
		"max_replication_slots":        "10",
		"hot_standby":                  "on",
		"hot_standby_feedback":         "on",
		"wal_keep_size":                "32MB",
		"max_wal_size":                 "128MB",
		"min_wal_size":                 "32MB",
		"logging_collector":            "off",
		"log_line_prefix":              "'%m [%p] %q%a '",
		"lc_messages":                  "'C'",
		"jit":                          "off",
		"wal_receiver_status_interval": "1s",
		// Standbys reconnect to a restarted or new upstream quickly.
		"wal_retrieve_retry_interval": "200ms",
	}
	for k, v := range b.opts.Settings {
		settings[k] = v
	}
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var conf strings.Builder
	conf.WriteString("\n# Added by regent pgtest. Port, listen address, socket directory and\n# cluster_name are set on the postgres command line.\n")
	for _, k := range keys {
		fmt.Fprintf(&conf, "%s = %s\n", k, settings[k])
	}
	f, err := os.OpenFile(filepath.Join(s.DataDir, "postgresql.conf"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("pgtest: configuring %s: %w", s.Name, err)
	}
	if _, err := f.WriteString(conf.String()); err != nil {
		f.Close()
		return fmt.Errorf("pgtest: configuring %s: %w", s.Name, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("pgtest: configuring %s: %w", s.Name, err)
	}
	hba := "# Written by regent pgtest.\nlocal all all trust\nlocal replication all trust\n"
	if b.opts.PasswordAuth {
		hba += fmt.Sprintf("host all %s 127.0.0.0/8 scram-sha-256\nhost replication %s 127.0.0.0/8 scram-sha-256\n", SuperUser, SuperUser)
	}
	hba += "host all all 127.0.0.0/8 trust\nhost replication all 127.0.0.0/8 trust\n"
	hbaPath := filepath.Join(s.DataDir, "pg_hba.conf")
	if err := os.WriteFile(hbaPath, []byte(hba), 0o600); err != nil {
		return fmt.Errorf("pgtest: writing %s: %w", hbaPath, err)
	}
	return b.runAs.chown(hbaPath)
}

// AddStandby clones the bench's Primary with pg_basebackup into a new
// standby called name, with its own physical replication slot
// ("<name>_slot", dashes made underscores), starts it and waits until it
// streams.
func (b *Bench) AddStandby(ctx context.Context, name string) (*Server, error) {
	s, err := b.AddStandbyFrom(ctx, name, b.Primary)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	b.Standbys = append(b.Standbys, s)
	b.mu.Unlock()
	return s, nil
}

// AddStandbyFrom is AddStandby from any running server of the bench:
// a promoted standby, or a standby (a cascading standby). The new standby
// is not appended to Standbys.
func (b *Bench) AddStandbyFrom(ctx context.Context, name string, upstream *Server) (*Server, error) {
	if upstream == nil {
		return nil, errors.New("pgtest: AddStandbyFrom needs an upstream server")
	}
	s, err := b.newServer(name)
	if err != nil {
		return nil, err
	}
	slot := SlotName(name)
	b.logf("pgtest: pg_basebackup %s from %s", s.Name, upstream)
	if _, err := b.Run(ctx, "pg_basebackup",
		"-d", upstream.DSN(BootstrapUser, "postgres"),
		"-D", s.DataDir, "-R", "-X", "stream", "-C", "-S", slot,
		"--checkpoint=fast", "--no-sync"); err != nil {
		return nil, err
	}
	if err := b.startNew(ctx, s); err != nil {
		return nil, err
	}
	if err := s.WaitStreaming(ctx); err != nil {
		return nil, err
	}
	b.logf("pgtest: %s streams from %s", s, upstream)
	return s, nil
}

// SlotName is the physical replication slot a standby called name uses.
func SlotName(name string) string { return strings.ReplaceAll(name, "-", "_") + "_slot" }

// Close stops every server (fast shutdown, then SIGKILL of whole process
// groups after a few seconds) and removes the base directory unless
// Options.KeepDir is set. It is safe to call more than once.
func (b *Bench) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	servers := append([]*Server(nil), b.servers...)
	b.mu.Unlock()

	var wg sync.WaitGroup
	errs := make([]error, len(servers))
	for i, s := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := s.Stop(ctx); err != nil {
				errs[i] = err
			}
			s.kill() // the last resort; a no-op when Stop worked
		}()
	}
	wg.Wait()
	if !b.opts.KeepDir {
		if err := os.RemoveAll(b.Dir); err != nil {
			errs = append(errs, fmt.Errorf("pgtest: removing %s: %w", b.Dir, err))
		}
	}
	return errors.Join(errs...)
}
