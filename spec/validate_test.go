package spec

import (
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

func validSpec() *regentv1.ClusterSpec {
	return &regentv1.ClusterSpec{
		Name:    "orders",
		Primary: "pg-us",
		Nodes: []*regentv1.NodeSpec{
			{Name: "pg-us", Region: "us-east", Host: "10.0.0.1", Port: 5432, KeeperAddr: "10.0.0.1:8008", Tags: []string{"nofailover"}, Priority: 10},
			{Name: "pg-eu", Region: "eu-west", Host: "10.0.0.2", Port: 5432, Priority: -3},
		},
		Dns: &regentv1.DnsSpec{Server: "10.0.0.53:53", Zone: "example.test.", Record: "orders.example.test.", Ttl: 5, TsigKey: "k"},
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(s *regentv1.ClusterSpec)
		want   []string // the error's lines; empty means valid
	}{
		{"valid", func(*regentv1.ClusterSpec) {}, nil},
		{"no policy and no dns", func(s *regentv1.ClusterSpec) { s.Policy, s.Dns = nil, nil }, nil},
		{"record equal to zone", func(s *regentv1.ClusterSpec) { s.Dns.Record = "Example.Test." }, nil},
		{"ipv6 keeper", func(s *regentv1.ClusterSpec) { s.Nodes[0].KeeperAddr = "[::1]:8008" }, nil},
		{"63-char name", func(s *regentv1.ClusterSpec) { s.Name = strings.Repeat("a", 63) }, nil},
		{"timeout equals interval", func(s *regentv1.ClusterSpec) {
			s.Policy = &regentv1.Policy{ProbeIntervalMs: 400, ProbeTimeoutMs: 400, DownAfterMs: 400}
		}, nil},

		{"empty name", func(s *regentv1.ClusterSpec) { s.Name = "" }, []string{"name: is required"}},
		{"bad name", func(s *regentv1.ClusterSpec) { s.Name = "Orders_1" },
			[]string{`name: "Orders_1" ` + nameRule}},
		{"64-char name", func(s *regentv1.ClusterSpec) { s.Name = strings.Repeat("a", 64) },
			[]string{`name: "` + strings.Repeat("a", 64) + `" ` + nameRule}},
		{"trailing dash", func(s *regentv1.ClusterSpec) { s.Name = "orders-" },
			[]string{`name: "orders-" ` + nameRule}},
		{"no nodes", func(s *regentv1.ClusterSpec) { s.Nodes = nil },
			[]string{"nodes: at least one node is required"}},
		{"nil node", func(s *regentv1.ClusterSpec) { s.Nodes = append(s.Nodes, nil) },
			[]string{"nodes[2]: node is empty"}},
		{"duplicate node", func(s *regentv1.ClusterSpec) { s.Nodes[1].Name = "pg-us" },
			[]string{`nodes[1].name: "pg-us" is already used by nodes[0]; node names must be unique`}},
		{"bad node name", func(s *regentv1.ClusterSpec) { s.Nodes[1].Name = "pg eu" },
			[]string{`nodes[1].name: "pg eu" ` + nameRule}},
		{"node fields missing", func(s *regentv1.ClusterSpec) {
			s.Nodes[1] = &regentv1.NodeSpec{}
		}, []string{"nodes[1].name: is required", "nodes[1].region: is required", "nodes[1].host: is required",
			"nodes[1].port: 0 is out of range 1-65535"}},
		{"port too large", func(s *regentv1.ClusterSpec) { s.Nodes[1].Port = 70000 },
			[]string{"nodes[1].port: 70000 is out of range 1-65535"}},
		{"host with space", func(s *regentv1.ClusterSpec) { s.Nodes[0].Host = "a b" },
			[]string{`nodes[0].host: "a b" must not contain whitespace`}},
		{"keeper without port", func(s *regentv1.ClusterSpec) { s.Nodes[0].KeeperAddr = "10.0.0.1" },
			[]string{`nodes[0].keeper_addr: "10.0.0.1" is not host:port (missing port in address)`}},
		{"keeper bad port", func(s *regentv1.ClusterSpec) { s.Nodes[0].KeeperAddr = "h:99999" },
			[]string{`nodes[0].keeper_addr: "h:99999": port "99999" is not a number in 1-65535`}},
		{"keeper no host", func(s *regentv1.ClusterSpec) { s.Nodes[0].KeeperAddr = ":8008" },
			[]string{`nodes[0].keeper_addr: ":8008" has no host; write host:port`}},
		{"empty tag", func(s *regentv1.ClusterSpec) { s.Nodes[0].Tags = []string{"a", " "} },
			[]string{"nodes[0].tags[1]: must not be empty"}},
		{"no primary", func(s *regentv1.ClusterSpec) { s.Primary = "" },
			[]string{"primary: is required: name the node that is primary when the cluster is created"}},
		{"unknown primary", func(s *regentv1.ClusterSpec) { s.Primary = "pg-ap" },
			[]string{`primary: "pg-ap" is not one of the nodes (pg-us, pg-eu)`}},
		{"negative durations", func(s *regentv1.ClusterSpec) {
			s.Policy = &regentv1.Policy{ProbeIntervalMs: -1, CooldownMs: -5, MaxLagOnFailoverBytes: -1}
		}, []string{"policy.probe_interval: -1ms must not be negative", "policy.cooldown: -5ms must not be negative",
			"policy.max_lag_on_failover: -1 bytes must not be negative"}},
		{"timeout above interval", func(s *regentv1.ClusterSpec) { s.Policy = &regentv1.Policy{ProbeTimeoutMs: 600} },
			[]string{"policy.probe_timeout: 600ms must not exceed policy.probe_interval (500ms): a probe must finish before the next one starts"}},
		{"down_after below interval", func(s *regentv1.ClusterSpec) { s.Policy = &regentv1.Policy{ProbeIntervalMs: 2000} },
			[]string{"policy.down_after: 1.5s must be at least policy.probe_interval (2s): a node needs at least one failed probe to be down"}},
		{"dns empty", func(s *regentv1.ClusterSpec) { s.Dns = &regentv1.DnsSpec{} }, []string{
			"dns.server: is required: the DNS server's host:port, e.g. 127.0.0.1:53",
			"dns.zone: is required, e.g. example.com.",
			"dns.record: is required, e.g. db-primary.example.com.",
			"dns.ttl: 0 is out of range 1-86400 seconds",
			"dns.tsig_key: is required: the name of the TSIG key (its secret stays in each witness's config)",
		}},
		{"dns not fqdn", func(s *regentv1.ClusterSpec) { s.Dns.Zone = "example.test"; s.Dns.Record = "a.example.test" }, []string{
			`dns.zone: "example.test" must be fully qualified, with a trailing dot ("example.test.")`,
			`dns.record: "a.example.test" must be fully qualified, with a trailing dot ("a.example.test.")`,
		}},
		{"dns record outside zone", func(s *regentv1.ClusterSpec) { s.Dns.Record = "orders.badexample.test." },
			[]string{`dns.record: "orders.badexample.test." is not inside zone "example.test."`}},
		{"dns bad label", func(s *regentv1.ClusterSpec) { s.Dns.Record = "a..example.test." },
			[]string{`dns.record: "a..example.test." has an empty label or one longer than 63 characters`}},
		{"dns bad char", func(s *regentv1.ClusterSpec) { s.Dns.Record = "a b.example.test." },
			[]string{`dns.record: "a b.example.test." contains ' '; use letters, digits, '-' and '_'`}},
		{"dns ttl too big", func(s *regentv1.ClusterSpec) { s.Dns.Ttl = 86401 },
			[]string{"dns.ttl: 86401 is out of range 1-86400 seconds"}},
		{"dns server", func(s *regentv1.ClusterSpec) { s.Dns.Server = "ns1" },
			[]string{`dns.server: "ns1" is not host:port (missing port in address)`}},

		{"fence by command with hooks", func(s *regentv1.ClusterSpec) {
			s.Policy = &regentv1.Policy{FenceMethods: []string{"command", "sql"}, FenceCommand: "fence.sh", FenceFallback: "refuse",
				PrePromoteCommand: "check.sh", PostFailoverCommand: "notify.sh", CommandTimeoutMs: 2500}
		}, nil},
		{"unknown fence method", func(s *regentv1.ClusterSpec) { s.Policy = &regentv1.Policy{FenceMethods: []string{"sql", "stonith"}} },
			[]string{`policy.fence_methods[1]: "stonith" is not a fence method; use sql or command`}},
		{"fence method listed twice", func(s *regentv1.ClusterSpec) {
			s.Policy = &regentv1.Policy{FenceMethods: []string{"command", "sql", "command"}, FenceCommand: "f"}
		}, []string{`policy.fence_methods[2]: "command" is already listed as fence_methods[0]; name each method once`}},
		{"fence method in upper case", func(s *regentv1.ClusterSpec) { s.Policy = &regentv1.Policy{FenceMethods: []string{"SQL"}} },
			[]string{`policy.fence_methods[0]: "SQL" is not a fence method; use sql or command`}},
		{"command method without fence_command", func(s *regentv1.ClusterSpec) {
			s.Policy = &regentv1.Policy{FenceMethods: []string{"sql", "command"}, FenceCommand: "  "}
		}, []string{`policy.fence_command: is required when policy.fence_methods includes "command": the shell command that fences the old primary (exit 0 = fenced)`}},
		{"fence_command that would never run", func(s *regentv1.ClusterSpec) { s.Policy = &regentv1.Policy{FenceCommand: "fence.sh"} },
			[]string{`policy.fence_command: is set but policy.fence_methods (sql) does not include "command", so it would never run; add "command" to fence_methods or remove fence_command`}},
		{"bad fence_fallback", func(s *regentv1.ClusterSpec) { s.Policy = &regentv1.Policy{FenceFallback: "promote"} },
			[]string{`policy.fence_fallback: "promote" is not a fallback; use "wait" (wait lease_ttl, then promote) or "refuse" (abort the failover)`}},
		{"blank hook commands", func(s *regentv1.ClusterSpec) {
			s.Policy = &regentv1.Policy{PrePromoteCommand: " ", PostFailoverCommand: "\t"}
		}, []string{"policy.pre_promote_command: is blank; omit the key to run no command",
			"policy.post_failover_command: is blank; omit the key to run no command"}},
		{"negative command_timeout and a bad method are both reported", func(s *regentv1.ClusterSpec) {
			s.Policy = &regentv1.Policy{CommandTimeoutMs: -1, FenceMethods: []string{"x"}}
		}, []string{"policy.command_timeout: -1ms must not be negative", `policy.fence_methods[0]: "x" is not a fence method; use sql or command`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := validSpec()
			tt.mutate(s)
			before := proto.Clone(s)
			err := Validate(s)
			if !proto.Equal(before, s) {
				t.Fatalf("Validate modified its argument")
			}
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate = nil, want %q", tt.want)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("errors.Is(err, ErrInvalid) = false")
			}
			if got := err.Error(); got != strings.Join(tt.want, "\n") {
				t.Fatalf("Validate:\n got %s\nwant %s", got, strings.Join(tt.want, "\n"))
			}
			fes := FieldErrors(err)
			if len(fes) != len(tt.want) {
				t.Fatalf("FieldErrors = %d, want %d", len(fes), len(tt.want))
			}
			for i, fe := range fes {
				if !strings.HasPrefix(tt.want[i], fe.Field+": ") {
					t.Errorf("FieldErrors[%d].Field = %q, want the prefix of %q", i, fe.Field, tt.want[i])
				}
			}
			// Deterministic: the same input gives the same message.
			if again := Validate(s); again.Error() != err.Error() {
				t.Fatalf("Validate is not deterministic:\n%v\n%v", err, again)
			}
		})
	}
}

func TestValidateNil(t *testing.T) {
	if err := Validate(nil); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Validate(nil) = %v, want ErrInvalid", err)
	}
}

func TestFieldErrorsWrapped(t *testing.T) {
	err := Validate(&regentv1.ClusterSpec{})
	wrapped := errors.Join(errors.New("other"), errors.New("x: "+"y"), errorsWrap(err))
	if got := len(FieldErrors(wrapped)); got != len(FieldErrors(err)) || got == 0 {
		t.Fatalf("FieldErrors through wrapping = %d, want %d", got, len(FieldErrors(err)))
	}
	if FieldErrors(nil) != nil || FieldErrors(errors.New("plain")) != nil {
		t.Fatalf("FieldErrors of a non-spec error must be nil")
	}
}

func errorsWrap(err error) error { return &wrapErr{err} }

type wrapErr struct{ err error }

func (w *wrapErr) Error() string { return "applying: " + w.err.Error() }
func (w *wrapErr) Unwrap() error { return w.err }

func TestWithDefaults(t *testing.T) {
	all := &regentv1.Policy{
		ProbeIntervalMs: 500, ProbeTimeoutMs: 400, DownAfterMs: 1500, LeaseTtlMs: 2000,
		LagAlertThresholdMs: 60000, FailoverLagThresholdMs: 300000, MaxLagOnFailoverBytes: 16 * 1024 * 1024, CooldownMs: 300000,
		FenceMethods: []string{"sql"}, FenceFallback: "wait", CommandTimeoutMs: 10000,
		PrimaryStartTimeoutMs: 30000, SwitchoverTimeoutMs: 30000,
	}
	if got := WithDefaults(nil); !proto.Equal(got, all) {
		t.Fatalf("WithDefaults(nil) = %v, want %v", got, all)
	}
	in := &regentv1.Policy{ProbeIntervalMs: 100, CooldownMs: -1}
	got := WithDefaults(in)
	if got.ProbeIntervalMs != 100 || got.CooldownMs != -1 || got.DownAfterMs != 1500 || got.MaxLagOnFailoverBytes != 16<<20 {
		t.Fatalf("WithDefaults kept/filled wrongly: %v", got)
	}
	if !proto.Equal(in, &regentv1.Policy{ProbeIntervalMs: 100, CooldownMs: -1}) {
		t.Fatalf("WithDefaults modified its argument: %v", in)
	}
	if got == in {
		t.Fatalf("WithDefaults returned its argument, want a copy")
	}
	// Idempotent.
	if again := WithDefaults(got); !proto.Equal(again, got) {
		t.Fatalf("WithDefaults is not idempotent")
	}
	// Set fence and hook settings are kept; the default list is not shared.
	set := &regentv1.Policy{FenceMethods: []string{"command"}, FenceCommand: "f", FenceFallback: "refuse", CommandTimeoutMs: 1,
		PrePromoteCommand: "p", PostFailoverCommand: "q"}
	want := proto.Clone(all).(*regentv1.Policy)
	want.FenceMethods, want.FenceCommand, want.FenceFallback, want.CommandTimeoutMs = []string{"command"}, "f", "refuse", 1
	want.PrePromoteCommand, want.PostFailoverCommand = "p", "q"
	if got := WithDefaults(set); !proto.Equal(got, want) {
		t.Fatalf("WithDefaults(%v) = %v, want %v", set, got, want)
	}
	d := WithDefaults(nil)
	d.FenceMethods[0] = "mutated"
	if DefaultFenceMethods[0] != FenceSQL || WithDefaults(nil).FenceMethods[0] != FenceSQL {
		t.Fatalf("WithDefaults shares DefaultFenceMethods with its result")
	}
}
