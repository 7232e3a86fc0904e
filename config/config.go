// Package config loads a witness's agent configuration (`regent agent --config FILE`) from
// strict YAML: an unknown key, a bad value or a missing required key is an error that names the
// key and its line, and nothing starts.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// ErrInvalid is wrapped by every error about the content of a configuration file.
var ErrInvalid = errors.New("invalid agent configuration")

// Agent is the configuration of one witness (`regent agent`).
type Agent struct {
	// NodeName names this witness; unique among witnesses.
	NodeName string `yaml:"node_name"`
	// Region is where this witness runs; votes count by distinct regions.
	Region string `yaml:"region"`
	// DataDir holds raft.db (raft-boltdb), snapshots/ and node-id.
	DataDir string `yaml:"data_dir"`
	// RaftAddr is the host:port Raft binds and advertises (TCP).
	RaftAddr string `yaml:"raft_addr"`
	// GossipAddr is the host:port memberlist binds and advertises (TCP and UDP).
	GossipAddr string `yaml:"gossip_addr"`
	// GRPCAddr is the host:port of the gRPC API.
	GRPCAddr string `yaml:"grpc_addr"`
	// HTTPAddr is the host:port of /metrics, /healthz and /readyz.
	HTTPAddr string `yaml:"http_addr"`
	// Join lists gossip addresses of other witnesses to contact at start.
	Join []string `yaml:"join"`
	// BootstrapExpect is how many witnesses must see each other before the first election.
	BootstrapExpect int `yaml:"bootstrap_expect"`
	// RaftMultiplier scales hashicorp/raft's default timings (1 = defaults; larger for wide
	// networks, smaller only for tests on loopback).
	RaftMultiplier float64 `yaml:"raft_multiplier"`
	// SnapshotThreshold is how many log entries since the last snapshot trigger a new one.
	SnapshotThreshold uint64 `yaml:"snapshot_threshold"`
	// SnapshotInterval is how often Raft checks whether to snapshot.
	SnapshotInterval Duration `yaml:"snapshot_interval"`
	// TrailingLogs is how many entries stay in the log after a snapshot, so a briefly lagging
	// follower catches up from the log rather than a snapshot.
	TrailingLogs uint64 `yaml:"trailing_logs"`
	// Log chooses the log format and level.
	Log Log `yaml:"log"`
	// Postgres is how this witness logs in to the PostgreSQL nodes it probes.
	Postgres Postgres `yaml:"postgres"`
	// Alerts configures where alerts go besides the log.
	Alerts Alerts `yaml:"alerts"`
	// DNSKeys are the TSIG keys this witness signs DNS updates with, by the name a cluster
	// spec's dns.tsig_key uses.
	DNSKeys map[string]DNSKey `yaml:"dns_keys"`
}

// Log is the logging section of the agent configuration.
type Log struct {
	// Format is "text" (default) or "json".
	Format string `yaml:"format"`
	// Level is debug, info (default), warn or error.
	Level string `yaml:"level"`
}

// Duration is a time.Duration written in YAML as a Go duration string ("500ms", "1.5s").
type Duration struct{ time.Duration }

// UnmarshalYAML parses a Go duration string and reports the line of a bad value.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil || v < 0 {
		return fmt.Errorf("line %d: %q is not a duration (write it like 500ms, 2s or 5m)", n.Line, n.Value)
	}
	d.Duration = v
	return nil
}

// Defaults for keys that may be omitted.
const (
	DefaultBootstrapExpect   = 3
	DefaultRaftMultiplier    = 1.0
	DefaultSnapshotThreshold = 8192
	DefaultSnapshotInterval  = 30 * time.Second
	DefaultTrailingLogs      = 10240
	DefaultPostgresUser      = "regent"
	DefaultPostgresDatabase  = "postgres"
	DefaultPostgresSSLMode   = "prefer"
	DefaultWebhookTimeout    = 5 * time.Second
	DefaultWebhookRetries    = 3
	// MaxWebhookRetries bounds webhook_retries.
	MaxWebhookRetries = 10
)

// sslModes are libpq's sslmode values, in order of strength.
var sslModes = []string{"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}

var nodeNameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$`)

// Load reads and validates the agent configuration in path.
func Load(path string) (*Agent, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read agent config: %w", err)
	}
	return Parse(data, path)
}

// Parse decodes and validates an agent configuration; name is used in error messages.
func Parse(data []byte, name string) (*Agent, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, fmt.Errorf("%s: %w: %s", name, ErrInvalid, cleanYAMLError(err))
	}
	if len(root.Content) == 0 {
		return nil, fmt.Errorf("%s: %w: the file is empty; see deploy/examples/agent.yaml", name, ErrInvalid)
	}
	top := root.Content[0]
	if top.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%s:%d: %w: expected a mapping of keys (node_name: …)", name, top.Line, ErrInvalid)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var c Agent
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: %w: %s", name, ErrInvalid, cleanYAMLError(err))
	}
	// present maps each key given in the file to its line; keys of the nested sections are
	// recorded as "section.key".
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
	for _, key := range []string{"node_name", "region", "data_dir", "raft_addr", "gossip_addr", "grpc_addr", "http_addr"} {
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
	for _, p := range c.validate() {
		problems = append(problems, fmt.Sprintf("%s: %s: %s", line(p.key), p.key, p.msg))
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("%w:\n  %s", ErrInvalid, strings.Join(problems, "\n  "))
	}
	return &c, nil
}

func (c *Agent) applyDefaults(present map[string]int) {
	for name, k := range c.DNSKeys {
		if k.Algorithm == "" {
			k.Algorithm = "hmac-sha256"
			c.DNSKeys[name] = k
		}
	}
	if _, ok := present["bootstrap_expect"]; !ok {
		c.BootstrapExpect = DefaultBootstrapExpect
	}
	if _, ok := present["raft_multiplier"]; !ok {
		c.RaftMultiplier = DefaultRaftMultiplier
	}
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = DefaultSnapshotThreshold
	}
	if c.TrailingLogs == 0 {
		c.TrailingLogs = DefaultTrailingLogs
	}
	if c.SnapshotInterval.Duration == 0 {
		c.SnapshotInterval.Duration = DefaultSnapshotInterval
	}
	if c.Log.Format == "" {
		c.Log.Format = "text"
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
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
	// An explicit 0 is kept for both so that validate can name it.
	if _, ok := present["alerts.webhook_timeout"]; !ok {
		c.Alerts.WebhookTimeout.Duration = DefaultWebhookTimeout
	}
	if _, ok := present["alerts.webhook_retries"]; !ok {
		c.Alerts.WebhookRetries = DefaultWebhookRetries
	}
}

type problem struct{ key, msg string }

func (c *Agent) validate() []problem {
	var ps []problem
	add := func(key, format string, args ...any) { ps = append(ps, problem{key, fmt.Sprintf(format, args...)}) }
	if c.NodeName != "" && !nodeNameRE.MatchString(c.NodeName) {
		add("node_name", "%q must be 1-63 letters, digits, '.', '_' or '-'", c.NodeName)
	}
	for key, addr := range map[string]string{"raft_addr": c.RaftAddr, "gossip_addr": c.GossipAddr, "grpc_addr": c.GRPCAddr, "http_addr": c.HTTPAddr} {
		if addr == "" {
			continue // reported as missing
		}
		if err := checkAddr(addr, key == "raft_addr" || key == "gossip_addr"); err != nil {
			add(key, "%v", err)
		}
	}
	for i, j := range c.Join {
		if err := checkAddr(j, false); err != nil {
			add("join", "entry %d: %v", i+1, err)
		}
	}
	if c.BootstrapExpect < 1 || c.BootstrapExpect > 5 {
		add("bootstrap_expect", "%d is out of range 1-5 (regent runs 3 or 5 voting witnesses)", c.BootstrapExpect)
	}
	if c.RaftMultiplier <= 0 || c.RaftMultiplier > 100 {
		add("raft_multiplier", "%v is out of range (0, 100]", c.RaftMultiplier)
	}
	if c.Log.Format != "text" && c.Log.Format != "json" {
		add("log", "format %q is not one of text, json", c.Log.Format)
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		add("log", "level %q is not one of debug, info, warn, error", c.Log.Level)
	}
	if !slices.Contains(sslModes, c.Postgres.SSLMode) {
		add("postgres.sslmode", "%q is not one of %s", c.Postgres.SSLMode, strings.Join(sslModes, ", "))
	}
	if c.Postgres.PasswordFile != "" {
		if err := checkPassfile(c.Postgres.PasswordFile); err != nil {
			add("postgres.password_file", "%v", err)
		}
	}
	if c.Alerts.WebhookURL != "" {
		if err := checkWebhookURL(c.Alerts.WebhookURL); err != nil {
			add("alerts.webhook_url", "%v", err)
		}
	}
	if c.Alerts.WebhookTimeout.Duration <= 0 {
		add("alerts.webhook_timeout", "%v must be greater than 0 (default %v)", c.Alerts.WebhookTimeout.Duration, DefaultWebhookTimeout)
	}
	if c.Alerts.WebhookRetries < 0 || c.Alerts.WebhookRetries > MaxWebhookRetries {
		add("alerts.webhook_retries", "%d is out of range 0-%d", c.Alerts.WebhookRetries, MaxWebhookRetries)
	}
	ps = append(ps, validateDNSKeys(c.DNSKeys)...)
	// Keys are ranged from a map above; sort for a stable message.
	sortProblems(ps)
	return ps
}

func sortProblems(ps []problem) {
	for i := 1; i < len(ps); i++ {
		for j := i; j > 0 && ps[j].key < ps[j-1].key; j-- {
			ps[j], ps[j-1] = ps[j-1], ps[j]
		}
	}
}

// checkAddr checks host:port; advertised addresses must name a concrete host.
func checkAddr(addr string, advertised bool) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not host:port: %w", addr, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("%q: port %q is not in 1-65535", addr, port)
	}
	if host == "" {
		return fmt.Errorf("%q has no host", addr)
	}
	if advertised {
		if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
			return fmt.Errorf("%q: bind a concrete address, not %s: other witnesses dial it", addr, host)
		}
	}
	return nil
}

// cleanYAMLError drops the "yaml: " prefix and the Go type names the decoder mentions.
func cleanYAMLError(err error) string {
	msg := err.Error()
	msg = strings.TrimPrefix(msg, "yaml: ")
	msg = strings.ReplaceAll(msg, "unmarshal errors:\n  ", "")
	msg = fieldNotFoundRE.ReplaceAllString(msg, "unknown key \"$1\"")
	msg = cannotUnmarshalRE.ReplaceAllStringFunc(msg, func(m string) string {
		sub := cannotUnmarshalRE.FindStringSubmatch(m)
		what := sub[2]
		switch {
		case what != "":
		case sub[1] == "seq":
			what = "a list"
		case sub[1] == "map":
			what = "a mapping"
		default:
			what = "a " + sub[1]
		}
		return what + " is not " + yamlKindOf(sub[3])
	})
	return msg
}

var (
	fieldNotFoundRE   = regexp.MustCompile(`field (\S+) not found in type \S+`)
	cannotUnmarshalRE = regexp.MustCompile("cannot unmarshal !!(\\w+)(?: (`[^`]*`|\\S+))? into (\\S+)")
)

// yamlKindOf names what a Go type the decoder mentions looks like in YAML.
func yamlKindOf(goType string) string {
	switch {
	case strings.HasPrefix(goType, "[]"):
		return "a list"
	case strings.HasPrefix(goType, "map[") || strings.HasPrefix(goType, "config."):
		return "a mapping of keys"
	case strings.HasPrefix(goType, "int") || strings.HasPrefix(goType, "uint"):
		return "a whole number"
	case strings.HasPrefix(goType, "float"):
		return "a number"
	case goType == "string":
		return "a string"
	}
	return "a " + goType
}
