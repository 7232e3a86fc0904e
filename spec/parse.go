package spec

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// ParseError is a problem found while parsing a spec file, located by file and line. It wraps
// a *FieldError (so FieldErrors finds it) and through that ErrInvalid.
type ParseError struct {
	// File is the file name given to Parse.
	File string
	// Line is 1-based; 0 when the problem has no single line (such as a missing top-level key
	// in an empty document).
	Line int
	FieldError
}

// Error returns "file:line: field: message".
func (e *ParseError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.FieldError.Error())
	}
	return fmt.Sprintf("%s: %s", e.File, e.FieldError.Error())
}

// Unwrap returns the *FieldError, which in turn wraps ErrInvalid.
func (e *ParseError) Unwrap() error { return &e.FieldError }

// Known keys of each mapping, in the order they are listed in error messages.
var (
	topKeys    = []string{"name", "primary", "nodes", "policy", "dns"}
	nodeKeys   = []string{"name", "region", "host", "port", "keeper_addr", "tags", "priority"}
	policyKeys = []string{"probe_interval", "probe_timeout", "down_after", "lease_ttl",
		"lag_alert_threshold", "failover_lag_threshold", "max_lag_on_failover", "cooldown",
		"fence_methods", "fence_command", "fence_fallback", "pre_promote_command", "post_failover_command",
		"command_timeout", "primary_start_timeout", "switchover_timeout"}
	dnsKeys = []string{"server", "zone", "record", "ttl", "tsig_key"}
)

// ParseFile reads the file at path and parses it with Parse.
func ParseFile(path string) (*regentv1.ClusterSpec, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading cluster spec: %w", err)
	}
	return Parse(data, path)
}

// Parse parses a cluster spec written in YAML, fills the policy defaults (WithDefaults) and
// validates the result (Validate). filename is used in error messages only.
//
// Parsing is strict: an unknown or repeated key, a value of the wrong type, a bad duration or
// size, or a missing required key (name, primary, nodes, and each node's name, region, host
// and port) is an error. Every problem found is reported, each as a *ParseError naming the
// file, the line and the field; the returned error wraps ErrInvalid. Durations are Go
// duration strings (500ms, 1.5s, 5m) and must be whole milliseconds; max_lag_on_failover is a
// byte count with an optional unit (see ParseSize); fence_methods is a list of method names
// (sql, command); fence_command, fence_fallback, pre_promote_command and
// post_failover_command are single strings. Omitted policy keys take their defaults; an
// explicit zero (or an empty fence_methods list) is refused because it could not be told
// apart from an omitted key.
func Parse(data []byte, filename string) (*regentv1.ClusterSpec, error) {
	if filename == "" {
		filename = "spec"
	}
	p := &parser{file: filename, lines: map[string]int{}}

	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &ParseError{File: filename, FieldError: FieldError{
				Msg: "is empty; a cluster spec needs at least name, primary and nodes"}}
		}
		return nil, p.yamlError(err)
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case errors.Is(err, io.EOF):
	case err != nil:
		return nil, p.yamlError(err)
	default:
		return nil, &ParseError{File: filename, Line: extra.Line, FieldError: FieldError{
			Msg: "a second YAML document starts here; put one cluster spec per file"}}
	}

	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	s := p.clusterSpec(root)
	if len(p.errs) > 0 {
		return nil, errors.Join(p.errs...)
	}
	s.Policy = WithDefaults(s.Policy)
	if err := Validate(s); err != nil {
		var errs []error
		for _, fe := range FieldErrors(err) {
			errs = append(errs, &ParseError{File: filename, Line: p.lineOf(fe.Field), FieldError: *fe})
		}
		return nil, errors.Join(errs...)
	}
	return s, nil
}

// parser collects problems and remembers the line of every field path it has seen, so the
// errors of Validate can be located too.
type parser struct {
	file  string
	errs  []error
	lines map[string]int
}

func (p *parser) errf(line int, field, format string, args ...any) {
	p.errs = append(p.errs, &ParseError{File: p.file, Line: line,
		FieldError: FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}})
}

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// yamlError turns a YAML syntax error into a *ParseError with the line it names.
func (p *parser) yamlError(err error) error {
	msg := err.Error()
	line := 0
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	} else {
		msg = strings.TrimPrefix(msg, "yaml: ")
	}
	return &ParseError{File: p.file, Line: line, FieldError: FieldError{Msg: "YAML syntax error: " + msg}}
}

// lineOf returns the line of path, or of its nearest enclosing field that has one.
func (p *parser) lineOf(path string) int {
	for path != "" {
		if l, ok := p.lines[path]; ok {
			return l
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			break
		}
		path = path[:i]
	}
	return 0
}

func resolve(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n == nil || (n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null")
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return fmt.Sprintf("%q", n.Value)
	default:
		return "something else"
	}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// mapping checks that n is a mapping whose keys are all known and unique, and returns the
// value node of each key present (null values included). where names n for humans.
func (p *parser) mapping(n *yaml.Node, path, where string, known []string) map[string]*yaml.Node {
	n = resolve(n)
	if n.Kind != yaml.MappingNode {
		p.errf(n.Line, path, "must be a mapping with keys %s, got %s", strings.Join(known, ", "), kindName(n))
		return nil
	}
	out := make(map[string]*yaml.Node, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolve(n.Content[i]), resolve(n.Content[i+1])
		if k.Kind != yaml.ScalarNode {
			p.errf(k.Line, path, "keys must be plain words, got %s", kindName(k))
			continue
		}
		isKnown := false
		for _, kk := range known {
			if kk == k.Value {
				isKnown = true
				break
			}
		}
		if !isKnown {
			p.errf(k.Line, "", "unknown key %q in %s (known: %s)", k.Value, where, strings.Join(known, ", "))
			continue
		}
		if _, dup := out[k.Value]; dup {
			p.errf(k.Line, "", "key %q appears twice in %s (first on line %d)", k.Value, where, p.lines[join(path, k.Value)])
			continue
		}
		out[k.Value] = v
		p.lines[join(path, k.Value)] = k.Line
	}
	return out
}

// required reports the keys of names that are absent or null in m.
func (p *parser) required(m map[string]*yaml.Node, line int, path, where string, names ...string) {
	for _, k := range names {
		if isNull(m[k]) {
			field := join(path, k)
			if v, ok := m[k]; ok {
				p.errf(v.Line, field, "is required and must not be empty")
			} else {
				p.errf(line, "", "missing required key %q in %s", k, where)
			}
		}
	}
}

func (p *parser) str(n *yaml.Node, path string) string {
	if isNull(n) {
		return ""
	}
	if n.Kind != yaml.ScalarNode {
		p.errf(n.Line, path, "must be a single value, got %s", kindName(n))
		return ""
	}
	return n.Value
}

// integer reads a whole number in [lo, hi]; rng describes the accepted range for messages.
func (p *parser) integer(n *yaml.Node, path string, lo, hi int64, rng string) (int64, bool) {
	if isNull(n) {
		return 0, false
	}
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" {
		p.errf(n.Line, path, "%s is not a whole number", kindName(n))
		return 0, false
	}
	var v int64
	if err := n.Decode(&v); err != nil {
		p.errf(n.Line, path, "%q is not a whole number in %s", n.Value, rng)
		return 0, false
	}
	if v < lo || v > hi {
		p.errf(n.Line, path, "%d is out of range %s", v, rng)
		return 0, false
	}
	return v, true
}

func (p *parser) clusterSpec(root *yaml.Node) *regentv1.ClusterSpec {
	s := &regentv1.ClusterSpec{}
	if isNull(resolve(root)) {
		p.errf(root.Line, "", "is empty; a cluster spec needs at least name, primary and nodes")
		return s
	}
	m := p.mapping(root, "", "the cluster spec", topKeys)
	if m == nil {
		return s
	}
	p.required(m, root.Line, "", "the cluster spec", "name", "primary", "nodes")
	s.Name = p.str(m["name"], "name")
	s.Primary = p.str(m["primary"], "primary")
	if n := m["nodes"]; !isNull(n) {
		if n.Kind != yaml.SequenceNode {
			p.errf(n.Line, "nodes", "must be a list of nodes, got %s", kindName(n))
		} else {
			for i, c := range n.Content {
				s.Nodes = append(s.Nodes, p.node(resolve(c), i))
			}
		}
	}
	if n := m["policy"]; !isNull(n) {
		s.Policy = p.policy(n)
	}
	if n := m["dns"]; !isNull(n) {
		s.Dns = p.dns(n)
	}
	return s
}

func (p *parser) node(n *yaml.Node, i int) *regentv1.NodeSpec {
	path := fmt.Sprintf("nodes[%d]", i)
	where := fmt.Sprintf("node %d", i+1)
	p.lines[path] = n.Line
	ns := &regentv1.NodeSpec{}
	m := p.mapping(n, path, where, nodeKeys)
	if m == nil {
		return ns
	}
	p.required(m, n.Line, path, where, "name", "region", "host", "port")
	ns.Name = p.str(m["name"], path+".name")
	ns.Region = p.str(m["region"], path+".region")
	ns.Host = p.str(m["host"], path+".host")
	if v, ok := p.integer(m["port"], path+".port", 1, 65535, "1-65535"); ok {
		ns.Port = uint32(v)
	}
	ns.KeeperAddr = p.str(m["keeper_addr"], path+".keeper_addr")
	if v, ok := p.integer(m["priority"], path+".priority", math.MinInt32, math.MaxInt32,
		fmt.Sprintf("%d..%d", math.MinInt32, math.MaxInt32)); ok {
		ns.Priority = int32(v)
	}
	if t := m["tags"]; !isNull(t) {
		if t.Kind != yaml.SequenceNode {
			p.errf(t.Line, path+".tags", "must be a list such as [nofailover], got %s", kindName(t))
		} else {
			for j, c := range t.Content {
				tp := fmt.Sprintf("%s.tags[%d]", path, j)
				c = resolve(c)
				p.lines[tp] = c.Line
				ns.Tags = append(ns.Tags, p.str(c, tp))
			}
		}
	}
	return ns
}

func (p *parser) policy(n *yaml.Node) *regentv1.Policy {
	pol := &regentv1.Policy{}
	m := p.mapping(n, "policy", "policy", policyKeys)
	if m == nil {
		return pol
	}
	defaults := WithDefaults(nil)
	dur := func(key string, dst *int64, def int64) {
		v := m[key]
		if isNull(v) {
			return
		}
		field := "policy." + key
		if v.Kind != yaml.ScalarNode {
			p.errf(v.Line, field, "must be a duration such as 500ms, 1.5s or 5m, got %s", kindName(v))
			return
		}
		d, err := time.ParseDuration(v.Value)
		if err != nil {
			p.errf(v.Line, field, "%q is not a duration: write a number with a unit, such as 500ms, 1.5s or 5m", v.Value)
			return
		}
		if d%time.Millisecond != 0 {
			p.errf(v.Line, field, "%q is not a whole number of milliseconds", v.Value)
			return
		}
		if d == 0 {
			p.errf(v.Line, field, "%q: zero cannot be stored (it means \"use the default\", %s); omit the key for the default or give a positive duration",
				v.Value, ms(def))
			return
		}
		*dst = d.Milliseconds()
	}
	dur("probe_interval", &pol.ProbeIntervalMs, defaults.ProbeIntervalMs)
	dur("probe_timeout", &pol.ProbeTimeoutMs, defaults.ProbeTimeoutMs)
	dur("down_after", &pol.DownAfterMs, defaults.DownAfterMs)
	dur("lease_ttl", &pol.LeaseTtlMs, defaults.LeaseTtlMs)
	dur("lag_alert_threshold", &pol.LagAlertThresholdMs, defaults.LagAlertThresholdMs)
	dur("failover_lag_threshold", &pol.FailoverLagThresholdMs, defaults.FailoverLagThresholdMs)
	dur("cooldown", &pol.CooldownMs, defaults.CooldownMs)
	dur("command_timeout", &pol.CommandTimeoutMs, defaults.CommandTimeoutMs)
	dur("primary_start_timeout", &pol.PrimaryStartTimeoutMs, defaults.PrimaryStartTimeoutMs)
	dur("switchover_timeout", &pol.SwitchoverTimeoutMs, defaults.SwitchoverTimeoutMs)
	if v := m["max_lag_on_failover"]; !isNull(v) {
		const field = "policy.max_lag_on_failover"
		if v.Kind != yaml.ScalarNode {
			p.errf(v.Line, field, "must be a size such as 16MB, got %s", kindName(v))
		} else if b, err := ParseSize(v.Value); err != nil {
			p.errf(v.Line, field, "%v", err)
		} else if b == 0 {
			p.errf(v.Line, field, "%q: zero cannot be stored (it means \"use the default\", 16MB); omit the key for the default or give a positive size", v.Value)
		} else {
			pol.MaxLagOnFailoverBytes = b
		}
	}
	if v := m["fence_methods"]; !isNull(v) {
		const field = "policy.fence_methods"
		switch {
		case v.Kind != yaml.SequenceNode:
			p.errf(v.Line, field, "must be a list such as [sql, command], got %s", kindName(v))
		case len(v.Content) == 0:
			p.errf(v.Line, field, "is an empty list, which cannot be stored (it means \"use the default\", [%s]); omit the key for the default or name at least one of %s",
				strings.Join(DefaultFenceMethods, ", "), strings.Join(FenceMethods, ", "))
		default:
			for j, c := range v.Content {
				fp := fmt.Sprintf("%s[%d]", field, j)
				c = resolve(c)
				p.lines[fp] = c.Line
				pol.FenceMethods = append(pol.FenceMethods, p.str(c, fp))
			}
		}
	}
	pol.FenceCommand = p.str(m["fence_command"], "policy.fence_command")
	pol.FenceFallback = p.str(m["fence_fallback"], "policy.fence_fallback")
	pol.PrePromoteCommand = p.str(m["pre_promote_command"], "policy.pre_promote_command")
	pol.PostFailoverCommand = p.str(m["post_failover_command"], "policy.post_failover_command")
	return pol
}

func (p *parser) dns(n *yaml.Node) *regentv1.DnsSpec {
	d := &regentv1.DnsSpec{}
	m := p.mapping(n, "dns", "dns", dnsKeys)
	if m == nil {
		return d
	}
	d.Server = p.str(m["server"], "dns.server")
	d.Zone = p.str(m["zone"], "dns.zone")
	d.Record = p.str(m["record"], "dns.record")
	if v, ok := p.integer(m["ttl"], "dns.ttl", 1, 86400, "1-86400 seconds"); ok {
		d.Ttl = uint32(v)
	}
	d.TsigKey = p.str(m["tsig_key"], "dns.tsig_key")
	return d
}

var sizeRE = regexp.MustCompile(`^([0-9]+)\s*(B|kB|MB|GB|TB)?$`)

// ParseSize parses a byte count: a whole number with an optional unit B, kB, MB, GB or TB,
// 1024-based as in PostgreSQL ("16MB" is 16*1024*1024). Units are case-sensitive, as in
// PostgreSQL.
func ParseSize(s string) (int64, error) {
	m := sizeRE.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil {
		return 0, fmt.Errorf("%q is not a size: write a whole number of bytes with an optional unit B, kB, MB, GB or TB, such as 16MB", s)
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is too large", s)
	}
	mult := map[string]int64{"": 1, "B": 1, "kB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}[m[2]]
	if n > math.MaxInt64/mult {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return n * mult, nil
}
