// Package spec reads, defaults and validates cluster specs: the desired state of one
// PostgreSQL cluster that an operator applies with `regent cluster apply -f spec.yaml`.
//
// Parse turns strict YAML into a *regentv1.ClusterSpec with the policy defaults filled in, so
// what reaches the Raft log is explicit. Validate is pure and deterministic; the replicated
// state machine calls it on every apply, so it must never read a clock, the network or the
// environment.
package spec

import (
	"errors"
	"fmt"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// ErrInvalid is wrapped by every error that Parse and Validate return for a bad spec, so
// callers can test errors.Is(err, spec.ErrInvalid) (the gRPC layer maps it to
// InvalidArgument). Use FieldErrors to list the individual problems.
var ErrInvalid = errors.New("invalid cluster spec")

// FieldError is one problem with one field of a spec. Field is a path in the YAML key names
// an operator writes, such as "nodes[1].port" or "policy.probe_timeout"; indexes are
// 0-based. FieldError wraps ErrInvalid.
type FieldError struct {
	// Field is the path of the offending field, e.g. "dns.record".
	Field string
	// Msg says what is wrong with it and, where useful, what would be accepted.
	Msg string
}

// Error returns "field: message".
func (e *FieldError) Error() string {
	if e.Field == "" {
		return e.Msg
	}
	return e.Field + ": " + e.Msg
}

// Unwrap returns ErrInvalid so errors.Is(err, ErrInvalid) holds.
func (e *FieldError) Unwrap() error { return ErrInvalid }

// FieldErrors returns every *FieldError inside err (following errors.Join and %w wrapping),
// in order. It returns nil when err holds none.
func FieldErrors(err error) []*FieldError {
	var out []*FieldError
	var walk func(error)
	walk = func(e error) {
		if e == nil {
			return
		}
		if fe, ok := e.(*FieldError); ok {
			out = append(out, fe)
			return
		}
		switch u := e.(type) {
		case interface{ Unwrap() []error }:
			for _, c := range u.Unwrap() {
				walk(c)
			}
		case interface{ Unwrap() error }:
			walk(u.Unwrap())
		}
	}
	walk(err)
	return out
}

// Defaults of DESIGN.md, used by WithDefaults for every zero Policy field.
const (
	DefaultProbeInterval        = 500 * time.Millisecond
	DefaultProbeTimeout         = 400 * time.Millisecond
	DefaultDownAfter            = 1500 * time.Millisecond
	DefaultLeaseTTL             = 2 * time.Second
	DefaultLagAlertThreshold    = 60 * time.Second
	DefaultFailoverLagThreshold = 300 * time.Second
	DefaultMaxLagOnFailover     = 16 * 1024 * 1024 // bytes
	DefaultCooldown             = 5 * time.Minute
	DefaultCommandTimeout       = 10 * time.Second
	DefaultPrimaryStartTimeout  = 30 * time.Second
	DefaultSwitchoverTimeout    = 30 * time.Second
	DefaultFenceFallback        = FallbackWait
)

// Fence methods a policy may list in fence_methods, tried in the order given.
const (
	// FenceSQL fences a reachable old primary over SQL: make it read-only and terminate its
	// client backends.
	FenceSQL = "sql"
	// FenceCommand runs the policy's fence_command; exit status 0 means fenced.
	FenceCommand = "command"
)

// Values of a policy's fence_fallback: what a failover does when no fence method confirms.
const (
	// FallbackWait waits lease_ttl, so that a keeper's lease has surely lapsed, then promotes.
	FallbackWait = "wait"
	// FallbackRefuse aborts the failover.
	FallbackRefuse = "refuse"
)

// FenceMethods lists every valid fence method, in the order error messages name them.
var FenceMethods = []string{FenceSQL, FenceCommand}

// DefaultFenceMethods is the fence_methods of a policy that names none. Treat it as
// read-only; WithDefaults copies it.
var DefaultFenceMethods = []string{FenceSQL}

// WithDefaults returns a copy of p in which every zero field holds its default
// (DefaultProbeInterval and so on; an empty fence_methods becomes DefaultFenceMethods and an
// empty fence_fallback DefaultFenceFallback). The commands (fence_command,
// pre_promote_command, post_failover_command) have no default: empty means none. A nil p
// gives the all-default policy. p is not modified.
//
// Because the schema's fields have no presence, an explicit zero cannot be told apart from an
// omitted key: zero always means "the default". Parse refuses an explicit zero for that reason.
func WithDefaults(p *regentv1.Policy) *regentv1.Policy {
	out := &regentv1.Policy{}
	if p != nil {
		out = proto.Clone(p).(*regentv1.Policy)
	}
	setMS := func(v *int64, d time.Duration) {
		if *v == 0 {
			*v = d.Milliseconds()
		}
	}
	setMS(&out.ProbeIntervalMs, DefaultProbeInterval)
	setMS(&out.ProbeTimeoutMs, DefaultProbeTimeout)
	setMS(&out.DownAfterMs, DefaultDownAfter)
	setMS(&out.LeaseTtlMs, DefaultLeaseTTL)
	setMS(&out.LagAlertThresholdMs, DefaultLagAlertThreshold)
	setMS(&out.FailoverLagThresholdMs, DefaultFailoverLagThreshold)
	setMS(&out.CooldownMs, DefaultCooldown)
	setMS(&out.CommandTimeoutMs, DefaultCommandTimeout)
	setMS(&out.PrimaryStartTimeoutMs, DefaultPrimaryStartTimeout)
	setMS(&out.SwitchoverTimeoutMs, DefaultSwitchoverTimeout)
	if out.MaxLagOnFailoverBytes == 0 {
		out.MaxLagOnFailoverBytes = DefaultMaxLagOnFailover
	}
	if len(out.FenceMethods) == 0 {
		out.FenceMethods = slices.Clone(DefaultFenceMethods)
	}
	if out.FenceFallback == "" {
		out.FenceFallback = DefaultFenceFallback
	}
	return out
}

// nameRE is the syntax of cluster and node names: a DNS label in lower case.
var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

const nameRule = "must be 1-63 lower-case letters, digits or '-', starting and ending with a letter or digit"

// Validate checks s against the rules below and returns nil or an error that joins one
// *FieldError per problem (all of them, in field order), each wrapping ErrInvalid.
//
// Rules: the cluster name and node names match ^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$; there is
// at least one node; node names are unique; every node has a region and a host; ports are
// 1-65535; keeper_addr, if set, is host:port; tags are non-empty; primary names a node. The
// policy, after WithDefaults, has no negative value, probe_timeout <= probe_interval,
// down_after >= probe_interval and a positive lease_ttl; its fence_methods are each one of
// FenceMethods, listed once; fence_command is set exactly when fence_methods includes
// "command"; fence_fallback is "wait" or "refuse"; the commands, when set, are not blank. DNS, if present, has a host:port
// server, a fully qualified zone and record (trailing dot) with the record inside the zone,
// a ttl of 1-86400 and a tsig_key name.
//
// Validate is pure and deterministic: the state machine calls it while applying the log.
func Validate(s *regentv1.ClusterSpec) error {
	if s == nil {
		return &FieldError{Msg: "cluster spec is missing"}
	}
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)})
	}

	switch {
	case s.GetName() == "":
		add("name", "is required")
	case !nameRE.MatchString(s.GetName()):
		add("name", "%q %s", s.GetName(), nameRule)
	}

	if len(s.GetNodes()) == 0 {
		add("nodes", "at least one node is required")
	}
	seen := make(map[string]int, len(s.GetNodes()))
	for i, n := range s.GetNodes() {
		p := fmt.Sprintf("nodes[%d]", i)
		if n == nil {
			add(p, "node is empty")
			continue
		}
		switch {
		case n.GetName() == "":
			add(p+".name", "is required")
		case !nameRE.MatchString(n.GetName()):
			add(p+".name", "%q %s", n.GetName(), nameRule)
		default:
			if j, dup := seen[n.GetName()]; dup {
				add(p+".name", "%q is already used by nodes[%d]; node names must be unique", n.GetName(), j)
			} else {
				seen[n.GetName()] = i
			}
		}
		if strings.TrimSpace(n.GetRegion()) == "" {
			add(p+".region", "is required")
		}
		if strings.TrimSpace(n.GetHost()) == "" {
			add(p+".host", "is required")
		} else if strings.ContainsAny(n.GetHost(), " \t\r\n") {
			add(p+".host", "%q must not contain whitespace", n.GetHost())
		}
		if n.GetPort() < 1 || n.GetPort() > 65535 {
			add(p+".port", "%d is out of range 1-65535", n.GetPort())
		}
		if n.GetKeeperAddr() != "" {
			if msg := checkHostPort(n.GetKeeperAddr()); msg != "" {
				add(p+".keeper_addr", "%s", msg)
			}
		}
		for j, t := range n.GetTags() {
			if strings.TrimSpace(t) == "" {
				add(fmt.Sprintf("%s.tags[%d]", p, j), "must not be empty")
			}
		}
	}

	switch {
	case s.GetPrimary() == "":
		add("primary", "is required: name the node that is primary when the cluster is created")
	case len(s.GetNodes()) > 0:
		if _, ok := seen[s.GetPrimary()]; !ok {
			add("primary", "%q is not one of the nodes (%s)", s.GetPrimary(), nodeNames(s))
		}
	}

	errs = append(errs, validatePolicy(WithDefaults(s.GetPolicy()))...)
	if s.GetDns() != nil {
		errs = append(errs, validateDNS(s.GetDns())...)
	}
	if len(errs) == 0 {
		return nil
	}
	return errors.Join(errs...)
}

func nodeNames(s *regentv1.ClusterSpec) string {
	names := make([]string, 0, len(s.GetNodes()))
	for _, n := range s.GetNodes() {
		if n.GetName() != "" && !slices.Contains(names, n.GetName()) {
			names = append(names, n.GetName())
		}
	}
	if len(names) == 0 {
		return "none named"
	}
	return strings.Join(names, ", ")
}

func ms(v int64) time.Duration { return time.Duration(v) * time.Millisecond }

func validatePolicy(p *regentv1.Policy) []error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{Field: "policy." + field, Msg: fmt.Sprintf(format, args...)})
	}
	durations := []struct {
		key string
		v   int64
	}{
		{"probe_interval", p.GetProbeIntervalMs()},
		{"probe_timeout", p.GetProbeTimeoutMs()},
		{"down_after", p.GetDownAfterMs()},
		{"lease_ttl", p.GetLeaseTtlMs()},
		{"lag_alert_threshold", p.GetLagAlertThresholdMs()},
		{"failover_lag_threshold", p.GetFailoverLagThresholdMs()},
		{"cooldown", p.GetCooldownMs()},
		{"command_timeout", p.GetCommandTimeoutMs()},
		{"primary_start_timeout", p.GetPrimaryStartTimeoutMs()},
		{"switchover_timeout", p.GetSwitchoverTimeoutMs()},
	}
	negative := false
	for _, d := range durations {
		if d.v < 0 {
			add(d.key, "%s must not be negative", ms(d.v))
			negative = true
		}
	}
	if p.GetMaxLagOnFailoverBytes() < 0 {
		add("max_lag_on_failover", "%d bytes must not be negative", p.GetMaxLagOnFailoverBytes())
	}
	if negative {
		// Cross-field comparisons would only repeat the problem.
		return append(errs, validateFencing(p)...)
	}
	if p.GetProbeTimeoutMs() > p.GetProbeIntervalMs() {
		add("probe_timeout", "%s must not exceed policy.probe_interval (%s): a probe must finish before the next one starts",
			ms(p.GetProbeTimeoutMs()), ms(p.GetProbeIntervalMs()))
	}
	if p.GetDownAfterMs() < p.GetProbeIntervalMs() {
		add("down_after", "%s must be at least policy.probe_interval (%s): a node needs at least one failed probe to be down",
			ms(p.GetDownAfterMs()), ms(p.GetProbeIntervalMs()))
	}
	return append(errs, validateFencing(p)...)
}

// validateFencing checks the fence and hook settings of a defaulted policy.
func validateFencing(p *regentv1.Policy) []error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{Field: "policy." + field, Msg: fmt.Sprintf(format, args...)})
	}
	seen := map[string]int{}
	for i, m := range p.GetFenceMethods() {
		field := fmt.Sprintf("fence_methods[%d]", i)
		switch j, dup := seen[m]; {
		case !slices.Contains(FenceMethods, m):
			add(field, "%q is not a fence method; use %s", m, strings.Join(FenceMethods, " or "))
		case dup:
			add(field, "%q is already listed as fence_methods[%d]; name each method once", m, j)
		default:
			seen[m] = i
		}
	}
	_, usesCommand := seen[FenceCommand]
	cmd := p.GetFenceCommand()
	switch {
	case usesCommand && strings.TrimSpace(cmd) == "":
		add("fence_command", "is required when policy.fence_methods includes %q: the shell command that fences the old primary (exit 0 = fenced)", FenceCommand)
	case !usesCommand && cmd != "":
		add("fence_command", "is set but policy.fence_methods (%s) does not include %q, so it would never run; add %q to fence_methods or remove fence_command",
			strings.Join(p.GetFenceMethods(), ", "), FenceCommand, FenceCommand)
	}
	switch p.GetFenceFallback() {
	case FallbackWait, FallbackRefuse:
	default:
		add("fence_fallback", "%q is not a fallback; use %q (wait lease_ttl, then promote) or %q (abort the failover)",
			p.GetFenceFallback(), FallbackWait, FallbackRefuse)
	}
	for _, c := range []struct{ key, v string }{{"pre_promote_command", p.GetPrePromoteCommand()}, {"post_failover_command", p.GetPostFailoverCommand()}} {
		if c.v != "" && strings.TrimSpace(c.v) == "" {
			add(c.key, "is blank; omit the key to run no command")
		}
	}
	return errs
}

func validateDNS(d *regentv1.DnsSpec) []error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{Field: "dns." + field, Msg: fmt.Sprintf(format, args...)})
	}
	if d.GetServer() == "" {
		add("server", "is required: the DNS server's host:port, e.g. 127.0.0.1:53")
	} else if msg := checkHostPort(d.GetServer()); msg != "" {
		add("server", "%s", msg)
	}
	zoneOK := false
	if d.GetZone() == "" {
		add("zone", "is required, e.g. example.com.")
	} else if msg := checkFQDN(d.GetZone()); msg != "" {
		add("zone", "%s", msg)
	} else {
		zoneOK = true
	}
	if d.GetRecord() == "" {
		add("record", "is required, e.g. db-primary.example.com.")
	} else if msg := checkFQDN(d.GetRecord()); msg != "" {
		add("record", "%s", msg)
	} else if zoneOK && !inZone(d.GetRecord(), d.GetZone()) {
		add("record", "%q is not inside zone %q", d.GetRecord(), d.GetZone())
	}
	if d.GetTtl() < 1 || d.GetTtl() > 86400 {
		add("ttl", "%d is out of range 1-86400 seconds", d.GetTtl())
	}
	if strings.TrimSpace(d.GetTsigKey()) == "" {
		add("tsig_key", "is required: the name of the TSIG key (its secret stays in each witness's config)")
	}
	return errs
}

// checkHostPort returns "" when addr is host:port with a non-empty host and a port of
// 1-65535, else what is wrong.
func checkHostPort(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		reason := err.Error()
		var ae *net.AddrError
		if errors.As(err, &ae) {
			reason = ae.Err
		}
		return fmt.Sprintf("%q is not host:port (%s)", addr, reason)
	}
	if host == "" {
		return fmt.Sprintf("%q has no host; write host:port", addr)
	}
	n, err := strconv.ParseUint(port, 10, 32)
	if err != nil || n < 1 || n > 65535 {
		return fmt.Sprintf("%q: port %q is not a number in 1-65535", addr, port)
	}
	return ""
}

// checkFQDN returns "" when name is a fully qualified domain name (with its trailing dot).
func checkFQDN(name string) string {
	if !strings.HasSuffix(name, ".") {
		return fmt.Sprintf("%q must be fully qualified, with a trailing dot (%q)", name, name+".")
	}
	if name == "." {
		return ""
	}
	if len(name) > 254 {
		return fmt.Sprintf("%q is longer than 253 characters", name)
	}
	for _, label := range strings.Split(strings.TrimSuffix(name, "."), ".") {
		if label == "" || len(label) > 63 {
			return fmt.Sprintf("%q has an empty label or one longer than 63 characters", name)
		}
		for _, c := range label {
			ok := c == '-' || c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
			if !ok {
				return fmt.Sprintf("%q contains %q; use letters, digits, '-' and '_'", name, c)
			}
		}
	}
	return ""
}

func inZone(record, zone string) bool {
	r, z := strings.ToLower(record), strings.ToLower(zone)
	return z == "." || r == z || strings.HasSuffix(r, "."+z)
}
