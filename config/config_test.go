package config

import (
	"errors"
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

func TestLoadMissingFile(t *testing.T) {
	_, err := Load("/nonexistent/regent.yaml")
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/regent.yaml") {
		t.Errorf("Load of a missing file: %v", err)
	}
}
