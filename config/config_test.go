package config

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

const good = `node_name: w1
region: us-east
data_dir: /var/lib/regent/w1
raft_addr: 127.0.0.1:7101
gossip_addr: 127.0.0.1:7102
grpc_addr: 127.0.0.1:7103
http_addr: 127.0.0.1:7104
join: [127.0.0.1:7202]
`

func TestParseGoodWithDefaults(t *testing.T) {
	c, err := Parse([]byte(good), "w1.yaml")
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if c.NodeName != "w1" || c.Region != "us-east" || c.RaftAddr != "127.0.0.1:7101" || len(c.Join) != 1 {
		t.Errorf("fields not decoded: %+v", c)
	}
	if c.BootstrapExpect != 3 || c.RaftMultiplier != 1 || c.SnapshotInterval.Duration != 30*time.Second || c.Log.Format != "text" || c.Log.Level != "info" {
		t.Errorf("defaults not applied: %+v", c)
	}
}

func TestParseErrorsNameKeyAndLine(t *testing.T) {
	cases := []struct {
		name, yaml string
		want       []string
	}{
		{"unknown key", good + "raft_adr: x\n", []string{"line 9", `unknown key "raft_adr"`}},
		{"bad duration", good + "snapshot_interval: soon\n", []string{"line 9", `"soon" is not a duration`}},
		{"missing key", strings.Replace(good, "region: us-east\n", "", 1), []string{`missing required key "region"`}},
		{"bad port", strings.Replace(good, "127.0.0.1:7103", "127.0.0.1:99999", 1), []string{"w.yaml:6", "grpc_addr", "99999"}},
		{"unspecified raft host", strings.Replace(good, "127.0.0.1:7101", "0.0.0.0:7101", 1), []string{"w.yaml:4", "raft_addr", "concrete"}},
		{"bootstrap range", good + "bootstrap_expect: 0\n", []string{"w.yaml:9", "bootstrap_expect", "out of range"}},
		{"bad log level", good + "log: {level: loud}\n", []string{"log", "loud"}},
		{"not a mapping", "- a\n- b\n", []string{"expected a mapping"}},
		{"empty", "", []string{"empty"}},
		{"bad yaml", "node_name: [\n", []string{"w.yaml"}},
		{"unknown nested key", good + "postgres:\n  pasword_file: /x\n", []string{"line 10", `unknown key "pasword_file"`}},
		{"bad sslmode", good + "postgres:\n  user: probe\n  sslmode: maybe\n", []string{"w.yaml:11", "postgres.sslmode", `"maybe"`, "verify-full"}},
		{"missing password file", good + "postgres:\n  password_file: /nonexistent/pgpass\n", []string{"w.yaml:10", "postgres.password_file", "/nonexistent/pgpass", "does not exist", "chmod 600"}},
		{"webhook scheme", good + "alerts:\n  webhook_url: ftp://hooks.example/x\n", []string{"w.yaml:10", "alerts.webhook_url", `"ftp"`, "http or https"}},
		{"webhook no scheme", good + "alerts:\n  webhook_url: hooks.example/x\n", []string{"w.yaml:10", "alerts.webhook_url", "no scheme"}},
		{"webhook no host", good + "alerts:\n  webhook_url: https:///x\n", []string{"w.yaml:10", "alerts.webhook_url", "no host"}},
		{"webhook unparsable", good + "alerts:\n  webhook_url: \"http://[::1\"\n", []string{"w.yaml:10", "alerts.webhook_url", "does not parse"}},
		{"webhook timeout zero", good + "alerts:\n  webhook_url: https://hooks.example/x\n  webhook_timeout: 0s\n", []string{"w.yaml:11", "alerts.webhook_timeout", "greater than 0"}},
		{"webhook timeout bad", good + "alerts:\n  webhook_timeout: soon\n", []string{"line 10", `"soon" is not a duration`}},
		{"webhook retries high", good + "alerts:\n\n  webhook_retries: 11\n", []string{"w.yaml:11", "alerts.webhook_retries", "out of range 0-10"}},
		{"webhook retries negative", good + "alerts: {webhook_retries: -1}\n", []string{"w.yaml:9", "alerts.webhook_retries", "-1"}},
		{"section not a mapping", good + "alerts: loud\n", []string{"line 9", "`loud` is not a mapping of keys"}},
		{"list for a mapping", good + "postgres: [a]\n", []string{"line 9", "a list is not a mapping of keys"}},
		{"word for a number", good + "bootstrap_expect: three\n", []string{"line 9", "`three` is not a whole number"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(tc.yaml), "w.yaml")
			if err == nil {
				t.Fatalf("Parse accepted bad config: %+v", c)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error does not wrap ErrInvalid: %v", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestParseNewSectionDefaults(t *testing.T) {
	c, err := Parse([]byte(good), "w1.yaml")
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	wantPG := Postgres{User: "regent", Database: "postgres", SSLMode: "prefer"}
	if c.Postgres != wantPG {
		t.Errorf("postgres defaults: got %+v, want %+v", c.Postgres, wantPG)
	}
	wantAlerts := Alerts{WebhookTimeout: Duration{5 * time.Second}, WebhookRetries: 3}
	if c.Alerts != wantAlerts {
		t.Errorf("alerts defaults: got %+v, want %+v", c.Alerts, wantAlerts)
	}

	c, err = Parse([]byte(good+`postgres:
  user: probe
  database: app
  sslmode: verify-full
alerts:
  webhook_url: http://127.0.0.1:9000/hook
  webhook_timeout: 250ms
  webhook_retries: 0
`), "w1.yaml")
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	wantPG = Postgres{User: "probe", Database: "app", SSLMode: "verify-full"}
	if c.Postgres != wantPG {
		t.Errorf("postgres: got %+v, want %+v", c.Postgres, wantPG)
	}
	wantAlerts = Alerts{WebhookURL: "http://127.0.0.1:9000/hook", WebhookTimeout: Duration{250 * time.Millisecond}, WebhookRetries: 0}
	if c.Alerts != wantAlerts {
		t.Errorf("alerts: got %+v, want %+v (an explicit 0 retries must stay 0)", c.Alerts, wantAlerts)
	}
}

func TestWebhookURLSecretsStayOut(t *testing.T) {
	const token = "T0KEN-abc123"
	for _, u := range []string{
		"https:///services/" + token,
		"https://user:" + token + "@/x",
	} {
		_, err := Parse([]byte(good+"alerts:\n  webhook_url: \""+u+"\"\n"), "w.yaml")
		if err == nil {
			t.Fatalf("Parse accepted webhook_url %q", u)
		}
		if strings.Contains(err.Error(), token) {
			t.Errorf("error reveals the webhook token: %v", err)
		}
	}
	c, err := Parse([]byte(good+"alerts:\n  webhook_url: https://me:"+token+"@hooks.example/services/"+token+"?k="+token+"\n"), "w.yaml")
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
		for _, v := range []any{c.Alerts, *c, c} {
			out := fmt.Sprintf(verb, v)
			if strings.Contains(out, token) {
				t.Errorf("%s of %T reveals the webhook token: %s", verb, v, out)
			}
			if !strings.Contains(out, "https://hooks.example/…") {
				t.Errorf("%s of %T does not show the redacted webhook: %s", verb, v, out)
			}
		}
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load("/nonexistent/regent.yaml")
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/regent.yaml") {
		t.Errorf("Load of a missing file: %v", err)
	}
}
