package keeper

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/regentdb/regent/config"
	"github.com/regentdb/regent/fencing"
)

// ErrInvalidConfig is wrapped by every error about the content of a keeper configuration.
var ErrInvalidConfig = errors.New("invalid keeper configuration")

// Config is the configuration of one keeper (`regent keeper --config FILE`).
type Config struct {
	// NodeName is this PostgreSQL server's name in the cluster spec (a NodeSpec name).
	NodeName string `yaml:"node_name"`
	// Cluster is the name of the cluster the server belongs to.
	Cluster string `yaml:"cluster"`
	// DataDir is the server's data directory (PGDATA).
	DataDir string `yaml:"data_dir"`
	// BinDir holds pg_ctl and pg_controldata. Default DefaultBinDir, only when it exists.
	BinDir string `yaml:"bin_dir"`
	// Host and Port are where the local PostgreSQL server listens (default 127.0.0.1:5432).
	// Host may also be a Unix-socket directory (starting with '/').
	Host string `yaml:"host"`
	Port uint16 `yaml:"port"`
	// Postgres is the local superuser login (user default "postgres", database default
	// "postgres", optional password_file, sslmode default "prefer"). Fencing needs a
	// superuser: ALTER SYSTEM, pg_reload_conf and terminating every role's sessions.
	Postgres config.Postgres `yaml:"postgres"`
	// RunAs is the OS user pg_ctl and pg_controldata run as when the keeper runs as root
	// (default "postgres"); a keeper that is not root runs them as itself.
	RunAs string `yaml:"run_as"`
	// PostgresOptions are extra command-line options for the postgres server, passed with
	// pg_ctl -o when the keeper starts it (for instance ["-c", "config_file=/etc/pg/pg.conf"]).
	PostgresOptions []string `yaml:"postgres_options"`
	// PostgresLog is the file the server's output is appended to when the keeper starts it
	// (default state_dir/postgresql.log). The keeper opens it, so run_as need not own it.
	PostgresLog string `yaml:"postgres_log"`
	// StartTimeout bounds how long pg_ctl start waits for the server to accept connections
	// (crash recovery included). Default 60s.
	StartTimeout config.Duration `yaml:"start_timeout"`
	// RejoinTimeout bounds one REJOIN (rewind or re-clone, then the standby's start). It runs on
	// whether or not the leader that asked is still waiting: a re-clone of a large database
	// takes as long as it takes. Default 6h; zero in a Config built in code means the default.
	RejoinTimeout config.Duration `yaml:"rejoin_timeout"`
	// Witnesses are the gRPC addresses (host:port) of EVERY witness of the cluster: a lease
	// round counts when a majority of them granted it.
	Witnesses []string `yaml:"witnesses"`
	// ListenGRPC is the host:port of the Keeper API (port 0 picks a free port).
	ListenGRPC string `yaml:"listen_grpc"`
	// ListenHTTP is the host:port of the health endpoints and /metrics (port 0 picks one).
	ListenHTTP string `yaml:"listen_http"`
	// GossipAddr is the IP:port the keeper's memberlist member binds (TCP and UDP) and
	// advertises, so that the witnesses see the keeper in their gossip (`regent members`).
	// Optional: without it the keeper does not gossip. Gossip is never on the lease's path.
	GossipAddr string `yaml:"gossip_addr"`
	// Join are witnesses' gossip addresses (their gossip_addr); required with gossip_addr. The
	// keeper retries them with backoff until one answers, and again whenever it sees no witness.
	Join []string `yaml:"join"`
	// StateDir holds the keeper's durable state (highest fencing token, lease epoch, fence
	// and stop marks). Created with mode 0700 when missing.
	StateDir string `yaml:"state_dir"`
	// LeaseTTL is the primary's lease (default 2s); it must not exceed the cluster policy's
	// lease_ttl (the keeper uses the shorter of the two when it can read the policy).
	LeaseTTL config.Duration `yaml:"lease_ttl"`
	// LeaseDrift is the clock rate error assumed between hosts (default fencing.DefaultDrift).
	LeaseDrift float64 `yaml:"lease_drift"`
	// FenceMargin is how long before the lease's end the keeper starts fencing (default
	// 200ms): the time the local fence may take.
	FenceMargin config.Duration `yaml:"fence_margin"`
	// Log chooses the log format and level.
	Log config.Log `yaml:"log"`
}

// Defaults for keys that may be omitted.
const (
	DefaultBinDir           = "/usr/lib/postgresql/15/bin"
	DefaultHost             = "127.0.0.1"
	DefaultPort             = 5432
	DefaultPostgresUser     = "postgres"
	DefaultPostgresDatabase = "postgres"
	DefaultPostgresSSLMode  = "prefer"
	DefaultRunAs            = "postgres"
	DefaultLeaseTTL         = 2 * time.Second
	DefaultFenceMargin      = 200 * time.Millisecond
	DefaultStartTimeout     = 60 * time.Second
	DefaultRejoinTimeout    = 6 * time.Hour
)

var (
	nameRE   = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$`)
	sslModes = []string{"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}
)

// LoadConfig reads and validates the keeper configuration in path.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read keeper config: %w", err)
	}
	return ParseConfig(data, path)
}

// ParseConfig decodes strict YAML (an unknown key is an error), fills in defaults and
// validates; every problem is reported with its key and line. name is used in messages.
func ParseConfig(data []byte, name string) (*Config, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, fmt.Errorf("%s: %w: %s", name, ErrInvalidConfig, cleanYAMLError(err))
	}
	if len(root.Content) == 0 {
		return nil, fmt.Errorf("%s: %w: the file is empty; see keeper/DESIGN.md for an example", name, ErrInvalidConfig)
	}
	top := root.Content[0]
	if top.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%s:%d: %w: expected a mapping of keys (node_name: …)", name, top.Line, ErrInvalidConfig)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var c Config
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: %w: %s", name, ErrInvalidConfig, cleanYAMLError(err))
	}
	present := map[string]int{}
	for i := 0; i+1 < len(top.Content); i += 2 {
		key, val := top.Content[i], top.Content[i+1]
		present[key.Value] = key.Line
		if val.Kind == yaml.MappingNode {
			for j := 0; j+1 < len(val.Content); j += 2 {
				present[key.Value+"."+val.Content[j].Value] = val.Content[j].Line
			}
		}
	}
	var problems []string
	for _, key := range []string{"node_name", "cluster", "data_dir", "witnesses", "listen_grpc", "listen_http", "state_dir"} {
		if _, ok := present[key]; !ok {
			problems = append(problems, fmt.Sprintf("%s: missing required key %q", name, key))
		}
	}
	line := func(key string) string {
		if l, ok := present[key]; ok {
			return name + ":" + strconv.Itoa(l)
		}
		if section, _, nested := strings.Cut(key, "."); nested {
			if l, ok := present[section]; ok {
				return name + ":" + strconv.Itoa(l)
			}
		}
		return name
	}
	c.applyDefaults(present)
	for _, p := range c.problems(present) {
		problems = append(problems, fmt.Sprintf("%s: %s: %s", line(p.key), p.key, p.msg))
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("%w:\n  %s", ErrInvalidConfig, strings.Join(problems, "\n  "))
	}
	return &c, nil
}

// applyDefaults fills keys left out of the file. Keys given explicitly keep their value, so
// that a given 0 can be reported rather than silently replaced.
func (c *Config) applyDefaults(present map[string]int) {
	has := func(k string) bool { _, ok := present[k]; return ok }
	if !has("bin_dir") {
		if st, err := os.Stat(filepath.Join(DefaultBinDir, "pg_ctl")); err == nil && !st.IsDir() {
			c.BinDir = DefaultBinDir
		}
	}
	if !has("host") {
		c.Host = DefaultHost
	}
	if !has("port") {
		c.Port = DefaultPort
	}
	if c.Postgres.User == "" {
		c.Postgres.User = DefaultPostgresUser
	}
	if c.Postgres.Database == "" {
		c.Postgres.Database = DefaultPostgresDatabase
	}
	if c.Postgres.SSLMode == "" {
		c.Postgres.SSLMode = DefaultPostgresSSLMode
	}
	if !has("run_as") {
		c.RunAs = DefaultRunAs
	}
	if !has("postgres_log") && c.StateDir != "" {
		c.PostgresLog = filepath.Join(c.StateDir, "postgresql.log")
	}
	if !has("rejoin_timeout") {
		c.RejoinTimeout.Duration = DefaultRejoinTimeout
	}
	if !has("start_timeout") {
		c.StartTimeout.Duration = DefaultStartTimeout
	}
	if !has("lease_ttl") {
		c.LeaseTTL.Duration = DefaultLeaseTTL
	}
	if !has("lease_drift") {
		c.LeaseDrift = fencing.DefaultDrift
	}
	if !has("fence_margin") {
		c.FenceMargin.Duration = DefaultFenceMargin
	}
	if c.Log.Format == "" {
		c.Log.Format = "text"
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
}

// Validate checks a configuration built in code (ParseConfig checks files the same way).
func (c *Config) Validate() error {
	ps := c.problems(nil)
	if len(ps) == 0 {
		return nil
	}
	msgs := make([]string, len(ps))
	for i, p := range ps {
		msgs[i] = p.key + ": " + p.msg
	}
	return fmt.Errorf("%w:\n  %s", ErrInvalidConfig, strings.Join(msgs, "\n  "))
}

type problem struct{ key, msg string }

// problems lists what is wrong, in key order. present (nil for a Config built in code) tells
// which keys the file gave, to attribute the lease problem to the key that was set.
func (c *Config) problems(present map[string]int) []problem {
	var ps []problem
	add := func(key, format string, args ...any) { ps = append(ps, problem{key, fmt.Sprintf(format, args...)}) }
	switch {
	case c.NodeName == "" && (present == nil || hasKey(present, "node_name")):
		add("node_name", "is empty; give the node's name as in the cluster spec")
	case c.NodeName != "" && !nameRE.MatchString(c.NodeName):
		add("node_name", "%q must be 1-63 letters, digits, '.', '_' or '-'", c.NodeName)
	}
	if c.Cluster == "" && (present == nil || hasKey(present, "cluster")) {
		add("cluster", "is empty; give the cluster's name as applied with regent cluster apply")
	}
	if c.DataDir == "" {
		if present == nil || hasKey(present, "data_dir") {
			add("data_dir", "is empty; give the PostgreSQL data directory (PGDATA)")
		}
	} else if !filepath.IsAbs(c.DataDir) {
		add("data_dir", "%q must be an absolute path", c.DataDir)
	}
	switch {
	case c.BinDir == "" && present != nil && !hasKey(present, "bin_dir"):
		add("bin_dir", "missing, and %s/pg_ctl does not exist; set bin_dir to the directory holding pg_ctl and pg_controldata", DefaultBinDir)
	case c.BinDir == "":
		add("bin_dir", "is empty; set it to the directory holding pg_ctl and pg_controldata")
	default:
		for _, prog := range []string{"pg_ctl", "pg_controldata"} {
			st, err := os.Stat(filepath.Join(c.BinDir, prog))
			if err != nil || st.IsDir() || st.Mode().Perm()&0o111 == 0 {
				add("bin_dir", "%s has no executable %s; set bin_dir to the PostgreSQL server's bin directory", c.BinDir, prog)
			}
		}
	}
	if c.Host == "" {
		add("host", "is empty; give the address (or socket directory) the local PostgreSQL listens on")
	}
	if c.Port == 0 {
		add("port", "0 is not a port; give the local PostgreSQL's port (1-65535)")
	}
	if !slices.Contains(sslModes, c.Postgres.SSLMode) {
		add("postgres.sslmode", "%q is not one of %s", c.Postgres.SSLMode, strings.Join(sslModes, ", "))
	}
	if c.Postgres.User == "" {
		add("postgres.user", "is empty; give a superuser role (default postgres)")
	}
	if c.Postgres.PasswordFile != "" {
		if _, err := c.Postgres.Password(c.Host, c.Port, c.Postgres.Database, c.Postgres.User); err != nil {
			add("postgres.password_file", "%v", err)
		}
	}
	if c.RunAs == "" {
		add("run_as", "is empty; give the OS user PostgreSQL runs as (default postgres)")
	} else if os.Geteuid() == 0 {
		if _, err := user.Lookup(c.RunAs); err != nil {
			add("run_as", "OS user %q: %v; create it or name the user that owns data_dir", c.RunAs, err)
		}
	}
	if c.PostgresLog != "" && !filepath.IsAbs(c.PostgresLog) {
		add("postgres_log", "%q must be an absolute path", c.PostgresLog)
	}
	if c.StartTimeout.Duration < time.Second {
		add("start_timeout", "%v is too short; pg_ctl waits in whole seconds (at least 1s)", c.StartTimeout.Duration)
	}
	if d := c.RejoinTimeout.Duration; d != 0 && d < time.Minute {
		add("rejoin_timeout", "%v is too short for a rewind or re-clone (at least 1m; default %v)", d, DefaultRejoinTimeout)
	}
	if len(c.Witnesses) == 0 {
		if present == nil || hasKey(present, "witnesses") {
			add("witnesses", "is empty; list the gRPC address of every witness")
		}
	}
	seen := map[string]bool{}
	for i, w := range c.Witnesses {
		if err := checkAddr(w, false); err != nil {
			add("witnesses", "entry %d: %v", i+1, err)
		} else if seen[w] {
			add("witnesses", "entry %d: %s is listed twice; each witness counts once towards the majority", i+1, w)
		}
		seen[w] = true
	}
	for key, addr := range map[string]string{"listen_grpc": c.ListenGRPC, "listen_http": c.ListenHTTP} {
		if addr == "" {
			if present == nil || hasKey(present, key) {
				add(key, "is empty; give host:port to listen on")
			}
			continue
		}
		if err := checkAddr(addr, true); err != nil {
			add(key, "%v", err)
		}
	}
	if c.ListenGRPC != "" && c.ListenGRPC == c.ListenHTTP && !strings.HasSuffix(c.ListenGRPC, ":0") {
		add("listen_http", "%s is also listen_grpc; give them different ports", c.ListenHTTP)
	}
	ps = append(ps, c.gossipProblems(present)...)
	if c.StateDir == "" {
		if present == nil || hasKey(present, "state_dir") {
			add("state_dir", "is empty; give a directory for the keeper's durable state")
		}
	} else if !filepath.IsAbs(c.StateDir) {
		add("state_dir", "%q must be an absolute path", c.StateDir)
	}
	if err := fencing.CheckLease(c.LeaseTTL.Duration, c.LeaseDrift, c.FenceMargin.Duration); err != nil {
		key := "lease_ttl"
		switch {
		case c.LeaseDrift < 0 || c.LeaseDrift >= 0.5:
			key = "lease_drift"
		case c.FenceMargin.Duration < 0 || (present != nil && hasKey(present, "fence_margin") && !hasKey(present, "lease_ttl")):
			key = "fence_margin"
		}
		add(key, "%v", err)
	}
	if c.Log.Format != "text" && c.Log.Format != "json" {
		add("log", "format %q is not one of text, json", c.Log.Format)
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		add("log", "level %q is not one of debug, info, warn, error", c.Log.Level)
	}
	slices.SortStableFunc(ps, func(a, b problem) int { return strings.Compare(a.key, b.key) })
	return ps
}

// gossipProblems checks gossip_addr and join: both or neither; memberlist binds and advertises
// an IP address, so gossip_addr must be one (a concrete one: the witnesses dial it).
func (c *Config) gossipProblems(present map[string]int) []problem {
	var ps []problem
	add := func(key, format string, args ...any) { ps = append(ps, problem{key, fmt.Sprintf(format, args...)}) }
	given := c.GossipAddr != "" || (present != nil && hasKey(present, "gossip_addr"))
	switch {
	case !given && len(c.Join) > 0:
		add("join", "is set without gossip_addr; give gossip_addr (where this keeper's gossip listens) or remove join")
	case !given:
		return nil
	case c.GossipAddr == "":
		add("gossip_addr", "is empty; give IP:port for the keeper's gossip (TCP and UDP), or remove it and join to not gossip")
	default:
		if err := checkAddr(c.GossipAddr, false); err != nil {
			add("gossip_addr", "%v", err)
		} else if host, _, _ := net.SplitHostPort(c.GossipAddr); net.ParseIP(host) == nil || net.ParseIP(host).IsUnspecified() {
			add("gossip_addr", "%q: give a concrete IP address (memberlist binds and advertises it; the witnesses dial it)", c.GossipAddr)
		}
		for key, addr := range map[string]string{"listen_grpc": c.ListenGRPC, "listen_http": c.ListenHTTP} {
			if addr == c.GossipAddr {
				add("gossip_addr", "%s is also %s; give them different ports", c.GossipAddr, key)
			}
		}
	}
	if given && len(c.Join) == 0 {
		add("join", "is missing or empty; with gossip_addr, list the witnesses' gossip addresses (their gossip_addr)")
	}
	for i, j := range c.Join {
		if err := checkAddr(j, false); err != nil {
			add("join", "entry %d: %v", i+1, err)
		}
	}
	return ps
}

func hasKey(present map[string]int, k string) bool { _, ok := present[k]; return ok }

// checkAddr checks host:port; listen addresses may use port 0 (a free port).
func checkAddr(addr string, listen bool) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not host:port: %w", addr, err)
	}
	p, err := strconv.Atoi(port)
	low := 1
	if listen {
		low = 0
	}
	if err != nil || p < low || p > 65535 {
		return fmt.Errorf("%q: port %q is not in %d-65535", addr, port, low)
	}
	if host == "" && !listen {
		return fmt.Errorf("%q has no host", addr)
	}
	return nil
}

var (
	fieldNotFoundRE   = regexp.MustCompile(`field (\S+) not found in type \S+`)
	cannotUnmarshalRE = regexp.MustCompile("cannot unmarshal !!(\\w+)(?: (`[^`]*`|\\S+))? into (\\S+)")
)

// cleanYAMLError drops the "yaml: " prefix and the Go type names the decoder mentions.
func cleanYAMLError(err error) string {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	msg = strings.ReplaceAll(msg, "unmarshal errors:\n  ", "")
	msg = fieldNotFoundRE.ReplaceAllString(msg, "unknown key \"$1\"")
	return cannotUnmarshalRE.ReplaceAllStringFunc(msg, func(m string) string {
		sub := cannotUnmarshalRE.FindStringSubmatch(m)
		what := sub[2]
		if what == "" {
			what = "a " + sub[1]
		}
		goType := sub[3]
		var want string
		switch {
		case strings.HasPrefix(goType, "[]"):
			want = "a list"
		case strings.HasPrefix(goType, "map[") || strings.Contains(goType, "."):
			want = "a mapping of keys"
		case strings.HasPrefix(goType, "int") || strings.HasPrefix(goType, "uint"):
			want = "a whole number in range"
		case strings.HasPrefix(goType, "float"):
			want = "a number"
		default:
			want = "a " + goType
		}
		return what + " is not " + want
	})
}

// rejoinTimeout is RejoinTimeout, or its default when unset.
func (c *Config) rejoinTimeout() time.Duration {
	if c.RejoinTimeout.Duration == 0 {
		return DefaultRejoinTimeout
	}
	return c.RejoinTimeout.Duration
}
