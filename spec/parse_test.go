package spec

import (
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

func TestParseFileExample(t *testing.T) {
	got, err := ParseFile("testdata/orders.yaml")
	if err != nil {
		t.Fatalf("ParseFile: %v", err)
	}
	want := &regentv1.ClusterSpec{
		Name:    "orders",
		Primary: "pg-us",
		Nodes: []*regentv1.NodeSpec{
			{Name: "pg-us", Region: "us-east", Host: "127.0.0.1", Port: 5432, KeeperAddr: "127.0.0.1:8008",
				Tags: []string{"nofailover"}, Priority: 10},
			{Name: "pg-eu", Region: "eu-west", Host: "127.0.0.1", Port: 5433},
		},
		Policy: &regentv1.Policy{
			ProbeIntervalMs:        500,
			ProbeTimeoutMs:         400,
			DownAfterMs:            1500,
			LeaseTtlMs:             2000,
			LagAlertThresholdMs:    60000,
			FailoverLagThresholdMs: 300000,
			MaxLagOnFailoverBytes:  16 << 20,
			CooldownMs:             300000,
			FenceMethods:           []string{"sql", "command"},
			FenceCommand:           "/usr/local/bin/fence-orders-primary",
			FenceFallback:          "wait",
			PrePromoteCommand:      "/usr/local/bin/check-orders-ready",
			PostFailoverCommand:    "/usr/local/bin/notify-orders-failover",
			CommandTimeoutMs:       10000,
			PrimaryStartTimeoutMs:  30000,
			SwitchoverTimeoutMs:    30000,
		},
		Dns: &regentv1.DnsSpec{Server: "127.0.0.1:5353", Zone: "example.test.",
			Record: "orders-primary.example.test.", Ttl: 5, TsigKey: "regent-key"},
	}
	if !proto.Equal(got, want) {
		t.Fatalf("ParseFile:\n got %v\nwant %v", got, want)
	}
}

func TestParseFileMissing(t *testing.T) {
	_, err := ParseFile("testdata/does-not-exist.yaml")
	if err == nil || !strings.Contains(err.Error(), "reading cluster spec") {
		t.Fatalf("ParseFile(missing) = %v, want a read error", err)
	}
	if errors.Is(err, ErrInvalid) {
		t.Fatalf("a read error must not be ErrInvalid: %v", err)
	}
}

const minimal = `name: orders
primary: a
nodes:
  - {name: a, region: r1, host: h1, port: 5432}
`

func TestParseDefaults(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want *regentv1.Policy
	}{
		{"no policy", minimal, WithDefaults(nil)},
		{"empty policy", minimal + "policy: {}\n", WithDefaults(nil)},
		{"null policy", minimal + "policy:\n", WithDefaults(nil)},
		{"partial policy", minimal + "policy: {down_after: 3s, max_lag_on_failover: 1048576, cooldown: 1m}\n",
			WithDefaults(&regentv1.Policy{DownAfterMs: 3000, MaxLagOnFailoverBytes: 1 << 20, CooldownMs: 60000})},
		{"fencing and hooks", minimal + "policy:\n  fence_methods: [command, sql]\n  fence_command: 'ssh bastion fence $REGENT_FROM_HOST'\n" +
			"  fence_fallback: refuse\n  pre_promote_command: /bin/true\n  post_failover_command: /bin/notify\n  command_timeout: 2.5s\n",
			WithDefaults(&regentv1.Policy{FenceMethods: []string{"command", "sql"}, FenceCommand: "ssh bastion fence $REGENT_FROM_HOST",
				FenceFallback: "refuse", PrePromoteCommand: "/bin/true", PostFailoverCommand: "/bin/notify", CommandTimeoutMs: 2500})},
		{"sizes and fractions", minimal + "policy: {probe_interval: 1.5s, probe_timeout: 1s, max_lag_on_failover: 2 GB}\n",
			WithDefaults(&regentv1.Policy{ProbeIntervalMs: 1500, ProbeTimeoutMs: 1000, MaxLagOnFailoverBytes: 2 << 30})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Parse([]byte(tt.yaml), "x.yaml")
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if !proto.Equal(s.GetPolicy(), tt.want) {
				t.Fatalf("policy:\n got %v\nwant %v", s.GetPolicy(), tt.want)
			}
			if s.GetDns() != nil {
				t.Fatalf("dns = %v, want nil when absent", s.GetDns())
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string // every line of the error, in order
	}{
		{
			name: "unknown key in node names line and known keys",
			yaml: `name: orders
primary: pg-us
nodes:
  - name: pg-us
    region: us-east
    host: 127.0.0.1
    port: 5432
  - name: pg-eu
    region: eu-west
    host: 127.0.0.1
    prot: 5433
    port: 5433
`,
			want: []string{`orders.yaml:11: unknown key "prot" in node 2 (known: name, region, host, port, keeper_addr, tags, priority)`},
		},
		{
			name: "unknown top-level key",
			yaml: minimal + "polcy: {}\n",
			want: []string{`orders.yaml:5: unknown key "polcy" in the cluster spec (known: name, primary, nodes, policy, dns)`},
		},
		{
			name: "unknown policy and dns keys",
			yaml: minimal + "policy: {probe_intervall: 1s}\ndns: {zone: a., ttl: 5, secret: x}\n",
			want: []string{
				`orders.yaml:5: unknown key "probe_intervall" in policy (known: probe_interval, probe_timeout, down_after, lease_ttl, lag_alert_threshold, failover_lag_threshold, max_lag_on_failover, cooldown, fence_methods, fence_command, fence_fallback, pre_promote_command, post_failover_command, command_timeout, primary_start_timeout, switchover_timeout)`,
				`orders.yaml:6: unknown key "secret" in dns (known: server, zone, record, ttl, tsig_key)`,
			},
		},
		{
			name: "bad duration names key line and value",
			yaml: minimal + "policy:\n  probe_interval: 500ms\n  down_after: 1.5\n",
			want: []string{`orders.yaml:7: policy.down_after: "1.5" is not a duration: write a number with a unit, such as 500ms, 1.5s or 5m`},
		},
		{
			name: "sub-millisecond duration",
			yaml: minimal + "policy: {lease_ttl: 1500us}\n",
			want: []string{`orders.yaml:5: policy.lease_ttl: "1500us" is not a whole number of milliseconds`},
		},
		{
			name: "explicit zero duration",
			yaml: minimal + "policy: {cooldown: 0s}\n",
			want: []string{`orders.yaml:5: policy.cooldown: "0s": zero cannot be stored (it means "use the default", 5m0s); omit the key for the default or give a positive duration`},
		},
		{
			name: "fence_methods not a list",
			yaml: minimal + "policy:\n  fence_methods: sql\n",
			want: []string{`orders.yaml:6: policy.fence_methods: must be a list such as [sql, command], got "sql"`},
		},
		{
			name: "empty fence_methods",
			yaml: minimal + "policy:\n  fence_methods: []\n",
			want: []string{`orders.yaml:6: policy.fence_methods: is an empty list, which cannot be stored (it means "use the default", [sql]); omit the key for the default or name at least one of sql, command`},
		},
		{
			name: "fence method that is not a word",
			yaml: minimal + "policy:\n  fence_methods: [sql, [command]]\n",
			want: []string{`orders.yaml:6: policy.fence_methods[1]: must be a single value, got a list`},
		},
		{
			name: "explicit zero command_timeout",
			yaml: minimal + "policy: {command_timeout: 0s}\n",
			want: []string{`orders.yaml:5: policy.command_timeout: "0s": zero cannot be stored (it means "use the default", 10s); omit the key for the default or give a positive duration`},
		},
		{
			name: "fencing validation errors are located",
			yaml: minimal + "policy:\n  fence_methods:\n    - sql\n    - comand\n  fence_fallback: promote\n  pre_promote_command: [a]\n",
			want: []string{`orders.yaml:10: policy.pre_promote_command: must be a single value, got a list`},
		},
		{
			name: "fencing validation errors are located after parsing",
			yaml: minimal + "policy:\n  fence_methods:\n    - sql\n    - comand\n  fence_fallback: promote\n",
			want: []string{
				`orders.yaml:8: policy.fence_methods[1]: "comand" is not a fence method; use sql or command`,
				`orders.yaml:9: policy.fence_fallback: "promote" is not a fallback; use "wait" (wait lease_ttl, then promote) or "refuse" (abort the failover)`,
			},
		},
		{
			name: "missing fence_command is located at the policy",
			yaml: minimal + "policy:\n  fence_methods: [command]\n",
			want: []string{`orders.yaml:5: policy.fence_command: is required when policy.fence_methods includes "command": the shell command that fences the old primary (exit 0 = fenced)`},
		},
		{
			name: "bad size",
			yaml: minimal + "policy:\n  max_lag_on_failover: 16mb\n",
			want: []string{`orders.yaml:6: policy.max_lag_on_failover: "16mb" is not a size: write a whole number of bytes with an optional unit B, kB, MB, GB or TB, such as 16MB`},
		},
		{
			name: "missing top-level keys",
			yaml: "name: orders\n",
			want: []string{
				`orders.yaml:1: missing required key "primary" in the cluster spec`,
				`orders.yaml:1: missing required key "nodes" in the cluster spec`,
			},
		},
		{
			name: "missing and empty node keys",
			yaml: "name: orders\nprimary: a\nnodes:\n  - name: a\n    region:\n    port: 5432\n",
			want: []string{
				`orders.yaml:5: nodes[0].region: is required and must not be empty`,
				`orders.yaml:4: missing required key "host" in node 1`,
			},
		},
		{
			name: "wrong types",
			yaml: "name: [orders]\nprimary: a\nnodes:\n  - {name: a, region: r, host: h, port: \"5432\", tags: nofailover, priority: high}\n",
			want: []string{
				`orders.yaml:1: name: must be a single value, got a list`,
				`orders.yaml:4: nodes[0].port: "5432" is not a whole number`,
				`orders.yaml:4: nodes[0].priority: "high" is not a whole number`,
				`orders.yaml:4: nodes[0].tags: must be a list such as [nofailover], got "nofailover"`,
			},
		},
		{
			name: "nodes not a list",
			yaml: "name: orders\nprimary: a\nnodes: {name: a}\n",
			want: []string{`orders.yaml:3: nodes: must be a list of nodes, got a mapping`},
		},
		{
			name: "port out of range",
			yaml: "name: orders\nprimary: a\nnodes:\n  - {name: a, region: r, host: h, port: 70000}\n",
			want: []string{`orders.yaml:4: nodes[0].port: 70000 is out of range 1-65535`},
		},
		{
			name: "duplicate key",
			yaml: minimal + "name: other\n",
			want: []string{`orders.yaml:5: key "name" appears twice in the cluster spec (first on line 1)`},
		},
		{
			name: "yaml syntax error",
			yaml: "name: orders\nprimary: a\nnodes: x: y\n",
			want: []string{`orders.yaml:3: YAML syntax error: mapping values are not allowed in this context`},
		},
		{
			name: "empty file",
			yaml: "",
			want: []string{`orders.yaml: is empty; a cluster spec needs at least name, primary and nodes`},
		},
		{
			name: "not a mapping",
			yaml: "- a\n",
			want: []string{`orders.yaml:1: must be a mapping with keys name, primary, nodes, policy, dns, got a list`},
		},
		{
			name: "two documents",
			yaml: minimal + "---\nname: again\n",
			want: []string{`orders.yaml:5: a second YAML document starts here; put one cluster spec per file`},
		},
		{
			name: "validation errors are located",
			yaml: `name: orders
primary: pg-xx
nodes:
  - {name: pg-us, region: us-east, host: h, port: 5432, keeper_addr: "h:0"}
  - {name: pg-us, region: eu-west, host: h, port: 5433}
policy:
  probe_interval: 1s
  probe_timeout: 2s
  down_after: -1s
dns:
  server: 127.0.0.1:53
  zone: example.test.
  record: db.other.test.
  ttl: 5
  tsig_key: k
`,
			want: []string{
				`orders.yaml:4: nodes[0].keeper_addr: "h:0": port "0" is not a number in 1-65535`,
				`orders.yaml:5: nodes[1].name: "pg-us" is already used by nodes[0]; node names must be unique`,
				`orders.yaml:2: primary: "pg-xx" is not one of the nodes (pg-us)`,
				`orders.yaml:9: policy.down_after: -1s must not be negative`,
				`orders.yaml:13: dns.record: "db.other.test." is not inside zone "example.test."`,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Parse([]byte(tt.yaml), "orders.yaml")
			if err == nil {
				t.Fatalf("Parse succeeded with %v, want an error", s)
			}
			if s != nil {
				t.Errorf("Parse returned a spec with its error: %v", s)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("errors.Is(err, ErrInvalid) = false for %v", err)
			}
			got := strings.Split(err.Error(), "\n")
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Fatalf("error:\n got %s\nwant %s", strings.Join(got, "\n     "), strings.Join(tt.want, "\n     "))
			}
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("errors.As(*ParseError) failed for %v", err)
			}
			if pe.File != "orders.yaml" {
				t.Errorf("ParseError.File = %q", pe.File)
			}
			if n := len(FieldErrors(err)); n != len(tt.want) {
				t.Errorf("FieldErrors found %d, want %d", n, len(tt.want))
			}
		})
	}
}

func TestParseAliasesAndFlowStyle(t *testing.T) {
	y := `name: orders
primary: a
nodes:
  - &base {name: a, region: r1, host: h, port: 5432}
  - {name: b, region: r2, host: h, port: 5433}
`
	s, err := Parse([]byte(y), "")
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if len(s.GetNodes()) != 2 || s.GetNodes()[1].GetName() != "b" {
		t.Fatalf("nodes = %v", s.GetNodes())
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr bool
	}{
		{"0", 0, false},
		{"123", 123, false},
		{"123B", 123, false},
		{"1kB", 1024, false},
		{"16MB", 16 << 20, false},
		{"16 MB", 16 << 20, false},
		{"2GB", 2 << 30, false},
		{"1TB", 1 << 40, false},
		{"1.5GB", 0, true},
		{"16mb", 0, true},
		{"-1", 0, true},
		{"MB", 0, true},
		{"", 0, true},
		{"99999999999TB", 0, true},
		{"99999999999999999999", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseSize(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d, err=%v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}
