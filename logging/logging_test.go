package logging

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func records(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("line %q is not JSON: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

func TestStdLoggerLevels(t *testing.T) {
	var buf bytes.Buffer
	l, err := New(&buf, "json", "debug")
	if err != nil {
		t.Fatal(err)
	}
	std := NewStdLogger(l)
	std.Printf("[WARN] memberlist: suspect node w2")
	std.Printf("[DEBUG] memberlist: stream connection")
	std.Printf("plain line")
	recs := records(t, &buf)
	want := []struct{ level, msg string }{
		{"WARN", "memberlist: suspect node w2"},
		{"DEBUG", "memberlist: stream connection"},
		{"INFO", "plain line"},
	}
	if len(recs) != len(want) {
		t.Fatalf("got %d records, want %d: %v", len(recs), len(want), recs)
	}
	for i, w := range want {
		if recs[i]["level"] != w.level || recs[i]["msg"] != w.msg {
			t.Errorf("record %d = %v, want level %s msg %q", i, recs[i], w.level, w.msg)
		}
	}
}

func TestHCLogAttributes(t *testing.T) {
	var buf bytes.Buffer
	l, err := New(&buf, "json", "info")
	if err != nil {
		t.Fatal(err)
	}
	h := NewHCLog(l, "raft").With("node", "w1")
	h.Debug("hidden")
	h.Warn("heartbeat timeout reached", "last-leader", "w2")
	recs := records(t, &buf)
	if len(recs) != 1 {
		t.Fatalf("want only the warn record, got %v", recs)
	}
	r := recs[0]
	if r["component"] != "raft" || r["node"] != "w1" || r["last-leader"] != "w2" || r["level"] != "WARN" {
		t.Errorf("unexpected record %v", r)
	}
	if h.IsDebug() || !h.IsWarn() {
		t.Errorf("level checks wrong: debug=%v warn=%v", h.IsDebug(), h.IsWarn())
	}
}

func TestNewRejectsBadInput(t *testing.T) {
	if _, err := New(&bytes.Buffer{}, "xml", "info"); err == nil || !strings.Contains(err.Error(), "xml") {
		t.Errorf("bad format: err = %v", err)
	}
	if _, err := New(&bytes.Buffer{}, "text", "loud"); err == nil || !strings.Contains(err.Error(), "loud") {
		t.Errorf("bad level: err = %v", err)
	}
}
