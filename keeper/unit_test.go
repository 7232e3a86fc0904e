package keeper

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/regentdb/regent/fencing"
	"github.com/regentdb/regent/internal/pglsn"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// fakeBin makes a directory holding executable pg_ctl and pg_controldata stand-ins.
func fakeBin(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, p := range []string{"pg_ctl", "pg_controldata"} {
		if err := os.WriteFile(filepath.Join(dir, p), []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func goodConfig(bin string) string {
	return `node_name: pg-us
cluster: orders
data_dir: /var/lib/postgresql/15/main
bin_dir: ` + bin + `
port: 5432
witnesses: [10.0.1.10:7103, 10.0.2.10:7103, 10.0.3.10:7103]
listen_grpc: 10.0.1.20:7201
listen_http: 10.0.1.20:8008
state_dir: /var/lib/regent/keeper
`
}

func TestParseConfigDefaults(t *testing.T) {
	bin := fakeBin(t)
	c, err := ParseConfig([]byte(goodConfig(bin)), "k.yaml")
	if err != nil {
		t.Fatalf("ParseConfig: %v", err)
	}
	if c.NodeName != "pg-us" || c.Cluster != "orders" || len(c.Witnesses) != 3 || c.BinDir != bin {
		t.Errorf("fields not decoded: %+v", c)
	}
	if c.Host != DefaultHost || c.Port != 5432 || c.RunAs != "postgres" || c.Postgres.User != "postgres" ||
		c.Postgres.Database != "postgres" || c.Postgres.SSLMode != "prefer" {
		t.Errorf("login defaults: %+v", c)
	}
	if c.LeaseTTL.Duration != 2*time.Second || c.LeaseDrift != fencing.DefaultDrift || c.FenceMargin.Duration != 200*time.Millisecond ||
		c.StartTimeout.Duration != time.Minute || c.RejoinTimeout.Duration != DefaultRejoinTimeout {
		t.Errorf("lease defaults: ttl %v drift %v margin %v start %v", c.LeaseTTL, c.LeaseDrift, c.FenceMargin, c.StartTimeout)
	}
	if c.PostgresLog != "/var/lib/regent/keeper/postgresql.log" || c.Log.Format != "text" || c.Log.Level != "info" {
		t.Errorf("other defaults: log %q %+v", c.PostgresLog, c.Log)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate of a parsed config: %v", err)
	}
}

func TestParseConfigErrorsNameKeyAndLine(t *testing.T) {
	bin := fakeBin(t)
	good := goodConfig(bin)
	cases := []struct {
		name, yaml string
		want       []string
	}{
		{"unknown key", good + "witness: [a:1]\n", []string{"line 10", `unknown key "witness"`}},
		{"unknown nested key", good + "postgres:\n  usr: x\n", []string{"line 11", `unknown key "usr"`}},
		{"missing key", strings.Replace(good, "cluster: orders\n", "", 1), []string{`missing required key "cluster"`}},
		{"missing witnesses", strings.Replace(good, "witnesses: [10.0.1.10:7103, 10.0.2.10:7103, 10.0.3.10:7103]\n", "", 1), []string{`missing required key "witnesses"`}},
		{"bad duration", good + "lease_ttl: soon\n", []string{"line 10", `"soon" is not a duration`}},
		{"ttl too short for margin", good + "lease_ttl: 250ms\n", []string{"k.yaml:10", "lease_ttl", "too short", "fence margin"}},
		{"margin too long", good + "fence_margin: 1700ms\n", []string{"k.yaml:10", "fence_margin", "too short"}},
		{"drift out of range", good + "lease_drift: 0.7\n", []string{"k.yaml:10", "lease_drift", "[0, 0.5)"}},
		{"port out of range", strings.Replace(good, "port: 5432", "port: 70000", 1), []string{"line 5", "70000"}},
		{"port zero", strings.Replace(good, "port: 5432", "port: 0", 1), []string{"k.yaml:5", "port", "not a port"}},
		{"bad witness", strings.Replace(good, "10.0.2.10:7103", "10.0.2.10", 1), []string{"k.yaml:6", "witnesses", "entry 2", "host:port"}},
		{"duplicate witness", strings.Replace(good, "10.0.2.10:7103", "10.0.1.10:7103", 1), []string{"k.yaml:6", "witnesses", "entry 2", "twice"}},
		{"bad listen", strings.Replace(good, "10.0.1.20:8008", "10.0.1.20", 1), []string{"k.yaml:8", "listen_http"}},
		{"relative data_dir", strings.Replace(good, "/var/lib/postgresql/15/main", "main", 1), []string{"k.yaml:3", "data_dir", "absolute"}},
		{"relative state_dir", strings.Replace(good, "/var/lib/regent/keeper", "keeper", 1), []string{"k.yaml:9", "state_dir", "absolute"}},
		{"bin_dir without pg_ctl", strings.Replace(good, bin, "/nonexistent", 1), []string{"k.yaml:4", "bin_dir", "pg_ctl"}},
		{"bad sslmode", good + "postgres:\n  sslmode: maybe\n", []string{"k.yaml:11", "postgres.sslmode", `"maybe"`}},
		{"missing password file", good + "postgres:\n  password_file: /nonexistent/pgpass\n", []string{"k.yaml:11", "postgres.password_file", "does not exist"}},
		{"unknown run_as", good + "run_as: no-such-user-regent\n", []string{"k.yaml:10", "run_as", "no-such-user-regent"}},
		{"bad log level", good + "log: {level: loud}\n", []string{"log", "loud"}},
		{"start timeout", good + "start_timeout: 10ms\n", []string{"k.yaml:10", "start_timeout", "at least 1s"}},
		{"rejoin timeout", good + "rejoin_timeout: 10s\n", []string{"k.yaml:10", "rejoin_timeout", "at least 1m"}},
		{"gossip without join", good + "gossip_addr: 10.0.1.20:7301\n", []string{"k.yaml", "join", "missing or empty", "gossip_addr"}},
		{"gossip with empty join", good + "gossip_addr: 10.0.1.20:7301\njoin: []\n", []string{"k.yaml:11", "join", "missing or empty"}},
		{"join without gossip", good + "join: [10.0.1.10:7102]\n", []string{"k.yaml:10", "join", "without gossip_addr"}},
		{"gossip hostname", good + "gossip_addr: pg-us.internal:7301\njoin: [10.0.1.10:7102]\n", []string{"k.yaml:10", "gossip_addr", "concrete IP"}},
		{"gossip unspecified", good + "gossip_addr: 0.0.0.0:7301\njoin: [10.0.1.10:7102]\n", []string{"k.yaml:10", "gossip_addr", "concrete IP"}},
		{"gossip port zero", good + "gossip_addr: 10.0.1.20:0\njoin: [10.0.1.10:7102]\n", []string{"k.yaml:10", "gossip_addr", "not in 1-65535"}},
		{"gossip on the http port", good + "gossip_addr: 10.0.1.20:8008\njoin: [10.0.1.10:7102]\n", []string{"k.yaml:10", "gossip_addr", "also listen_http"}},
		{"gossip empty", good + "gossip_addr: \"\"\njoin: [10.0.1.10:7102]\n", []string{"k.yaml:10", "gossip_addr", "is empty"}},
		{"bad join entry", good + "gossip_addr: 10.0.1.20:7301\njoin: [10.0.1.10:7102, w2]\n", []string{"k.yaml:11", "join", "entry 2", "host:port"}},
		{"join not a list", good + "gossip_addr: 10.0.1.20:7301\njoin: 10.0.1.10:7102\n", []string{"line 11", "is not a list"}},
		{"not a mapping", "- a\n", []string{"expected a mapping"}},
		{"empty", "", []string{"empty"}},
		{"list for a string", good + "run_as: [a]\n", []string{"line 10", "is not a string"}},
		{"string for a list", strings.Replace(good, "witnesses: [10.0.1.10:7103, 10.0.2.10:7103, 10.0.3.10:7103]", "witnesses: 10.0.1.10:7103", 1), []string{"line 6", "is not a list"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "unknown run_as" && os.Geteuid() != 0 {
				t.Skip("run_as is looked up only when the keeper runs as root")
			}
			_, err := ParseConfig([]byte(tc.yaml), "k.yaml")
			if err == nil {
				t.Fatal("ParseConfig accepted it")
			}
			if !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("error does not wrap ErrInvalidConfig: %v", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
}

func TestParseConfigGossip(t *testing.T) {
	bin := fakeBin(t)
	c, err := ParseConfig([]byte(goodConfig(bin)), "k.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.GossipAddr != "" || len(c.Join) != 0 {
		t.Errorf("gossip is on without gossip_addr: %q %v", c.GossipAddr, c.Join)
	}
	c, err = ParseConfig([]byte(goodConfig(bin)+"gossip_addr: 10.0.1.20:7301\njoin: [10.0.1.10:7102, w2.internal:7102]\n"), "k.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.GossipAddr != "10.0.1.20:7301" || len(c.Join) != 2 || c.Join[1] != "w2.internal:7102" {
		t.Errorf("gossip keys not decoded: %q %v", c.GossipAddr, c.Join)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate of a parsed config with gossip: %v", err)
	}
	c.Join = nil
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "join: is missing or empty") {
		t.Errorf("Validate of gossip_addr without join: %v", err)
	}
}

func TestValidateConfigBuiltInCode(t *testing.T) {
	c := Config{}
	err := c.Validate()
	if err == nil {
		t.Fatal("an empty Config validated")
	}
	for _, w := range []string{"node_name", "cluster", "data_dir", "bin_dir", "witnesses", "listen_grpc", "listen_http", "state_dir", "lease_ttl"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q:\n%v", w, err)
		}
	}
}

func TestTokenOrdering(t *testing.T) {
	cases := []struct {
		got, highest Token
		want         int // Compare
		refused      bool
	}{
		{Token{1, 5}, Token{1, 5}, 0, false},
		{Token{1, 6}, Token{1, 5}, 1, false},
		{Token{2, 1}, Token{1, 9}, 1, false},
		{Token{1, 4}, Token{1, 5}, -1, true},
		{Token{1, 99}, Token{2, 0}, -1, true},
		{Token{0, 0}, Token{0, 0}, 0, false},
		{Token{0, 1}, Token{}, 1, false},
	}
	for _, tc := range cases {
		if c := tc.got.Compare(tc.highest); c != tc.want {
			t.Errorf("%v.Compare(%v) = %d, want %d", tc.got, tc.highest, c, tc.want)
		}
		err := checkToken(tc.got, tc.highest)
		if (err != nil) != tc.refused {
			t.Errorf("checkToken(%v, %v) = %v, refused want %v", tc.got, tc.highest, err, tc.refused)
		}
		if err != nil {
			if !errors.Is(err, ErrStaleToken) || !strings.Contains(err.Error(), tc.got.String()) || !strings.Contains(err.Error(), tc.highest.String()) {
				t.Errorf("refusal must wrap ErrStaleToken and name both tokens: %v", err)
			}
		}
	}
	if tok := TokenFromProto(Token{3, 4}.Proto()); tok != (Token{3, 4}) {
		t.Errorf("proto round trip: %v", tok)
	}
	if !TokenFromProto(nil).IsZero() {
		t.Error("nil token is not zero")
	}
}

func TestStatePersistsAtomically(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s, err := openState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if st := s.Get(); st != (State{}) {
		t.Fatalf("fresh state %+v", st)
	}
	want := State{Highest: Token{2, 7}, LeaseEpoch: 3, Fence: FenceInstruction, FenceEpoch: 3, Stopped: true}
	if err := s.Update(func(st *State) { *st = want }); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("state_dir mode %v, %v", fi.Mode(), err)
	}
	if _, err := os.Stat(filepath.Join(dir, stateFile+".tmp")); !os.IsNotExist(err) {
		t.Errorf("temp file left behind: %v", err)
	}
	s2, err := openState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := s2.Get(); got != want {
		t.Errorf("reopened state %+v, want %+v", got, want)
	}
	if err := os.WriteFile(filepath.Join(dir, stateFile), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := openState(dir); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Errorf("corrupt state file: %v", err)
	}
}

func TestParseLag(t *testing.T) {
	cases := []struct {
		in   string
		want lagBound
		bad  bool
	}{
		{in: "16MB", want: lagBound{Bytes: 16 << 20}},
		{in: "1048576", want: lagBound{Bytes: 1 << 20}},
		{in: "0", want: lagBound{Bytes: 0}},
		{in: "8kB", want: lagBound{Bytes: 8 << 10}},
		{in: "5s", want: lagBound{Duration: 5 * time.Second, IsTime: true}},
		{in: "1m30s", want: lagBound{Duration: 90 * time.Second, IsTime: true}},
		{in: "250ms", want: lagBound{Duration: 250 * time.Millisecond, IsTime: true}},
		{in: "16mb", bad: true},
		{in: "-5s", bad: true},
		{in: "lots", bad: true},
		{in: "1.5MB", bad: true},
	}
	for _, tc := range cases {
		got, err := parseLag(tc.in)
		if tc.bad {
			if err == nil {
				t.Errorf("parseLag(%q) = %+v, want an error", tc.in, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("parseLag(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

func TestLagBoundCheck(t *testing.T) {
	now := time.Now()
	s := Status{ReceiveLSN: 2000, ReplayLSN: 1000, ReplayTimestamp: now.Add(-3 * time.Second)}
	for _, tc := range []struct {
		b  lagBound
		ok bool
	}{
		{lagBound{Bytes: 1000}, true},
		{lagBound{Bytes: 999}, false},
		{lagBound{Duration: 5 * time.Second, IsTime: true}, true},
		{lagBound{Duration: 2 * time.Second, IsTime: true}, false},
	} {
		if ok, why := tc.b.check(s, now); ok != tc.ok {
			t.Errorf("%+v: ok %v (%s), want %v", tc.b, ok, why, tc.ok)
		}
	}
	if ok, _ := (lagBound{Duration: time.Hour, IsTime: true}).check(Status{}, now); ok {
		t.Error("a standby that replayed nothing passed a time bound")
	}
	if ok, _ := (lagBound{Bytes: 0}).check(Status{ReceiveLSN: 0, ReplayLSN: 500}, now); !ok {
		t.Error("replay ahead of receive (no receiver yet) must count as no gap")
	}
}

func TestTallyRound(t *testing.T) {
	grant := func(epoch uint64, primary string) answer {
		return answer{resp: &regentv1.RenewLeaseResponse{Granted: true, CurrentEpoch: epoch, Primary: primary}}
	}
	refuse := func(epoch uint64, primary string) answer {
		return answer{resp: &regentv1.RenewLeaseResponse{CurrentEpoch: epoch, Primary: primary, Reason: "no"}}
	}
	down := answer{err: errors.New("unavailable")}
	cases := []struct {
		name    string
		epoch   uint64
		answers []answer
		want    tally
		outcome string
	}{
		{"all grant", 1, []answer{grant(1, "a"), grant(1, "a"), grant(1, "a")}, tally{Answered: 3, Granted: 3, Epoch: 1, Primary: "a"}, outcomeGranted},
		{"one down", 1, []answer{grant(1, "a"), down, grant(1, "a")}, tally{Answered: 2, Granted: 2, Epoch: 1, Primary: "a"}, outcomeGranted},
		{"two down", 1, []answer{grant(1, "a"), down, down}, tally{Answered: 1, Granted: 1, Epoch: 1, Primary: "a"}, outcomeNoQuorum},
		{"revoked at two", 1, []answer{refuse(1, "a"), grant(1, "a"), refuse(1, "a")}, tally{Answered: 3, Granted: 1, Epoch: 1, Primary: "a"}, outcomeDenied},
		{"newer epoch names me", 1, []answer{refuse(3, "a"), refuse(3, "a"), down}, tally{Answered: 2, Epoch: 3, Primary: "a"}, outcomeDenied},
		{"another primary", 1, []answer{grant(1, "a"), refuse(2, "b"), grant(1, "a")}, tally{Answered: 3, Granted: 2, Epoch: 2, Primary: "b", Other: "b"}, outcomeGranted},
		{"old epoch elsewhere ignored", 3, []answer{grant(3, "a"), refuse(2, "b")}, tally{Answered: 2, Granted: 1, Epoch: 3, Primary: "a"}, outcomeDenied},
		{"unknown cluster", 1, []answer{refuse(0, ""), refuse(0, ""), refuse(0, "")}, tally{Answered: 3}, outcomeDenied},
	}
	for _, tc := range cases {
		got := tallyRound("a", tc.epoch, tc.answers)
		if got != tc.want {
			t.Errorf("%s: tally %+v, want %+v", tc.name, got, tc.want)
		}
		if o := got.outcome(majority(3)); o != tc.outcome {
			t.Errorf("%s: outcome %s, want %s", tc.name, o, tc.outcome)
		}
	}
	// Every renewal carries the policy's lease_ttl and the witnesses' count: the shortest ttl
	// and the largest count win.
	withPolicy := func(a answer, ttlMs int64, voters uint32) answer {
		a.resp.LeaseTtlMs, a.resp.Voters = ttlMs, voters
		return a
	}
	got := tallyRound("a", 1, []answer{withPolicy(grant(1, "a"), 2000, 3), withPolicy(grant(1, "a"), 1500, 5), down, withPolicy(refuse(1, "a"), 0, 0)})
	if got.TTL != 1500*time.Millisecond || got.Voters != 5 {
		t.Errorf("policy from the answers: ttl %v, voters %d; want 1.5s and 5", got.TTL, got.Voters)
	}
	for n, want := range map[int]int{1: 1, 2: 2, 3: 2, 4: 3, 5: 3} {
		if got := majority(n); got != want {
			t.Errorf("majority(%d) = %d, want %d", n, got, want)
		}
	}
}

// The in-place restart report (restart.go): from the crash, through the settle time after the
// server answers, and not after restartGiveUp failed starts.
func TestRestartReport(t *testing.T) {
	t0 := time.Unix(1000, 0)
	var r restartState
	if on, _ := r.report(t0); on {
		t.Fatal("reported before any crash")
	}
	r.begin(t0)
	r.begin(t0.Add(time.Second)) // a second look does not restart the clock
	if on, d := r.report(t0.Add(2 * time.Second)); !on || d != 2*time.Second {
		t.Fatalf("during the restart: %v %v, want true 2s", on, d)
	}
	r.failed(1)
	if on, _ := r.report(t0.Add(2 * time.Second)); !on {
		t.Fatal("one failed start ended the report; the second try comes soon")
	}
	r.answeredAt(t0.Add(3 * time.Second))
	if on, d := r.report(t0.Add(3*time.Second + restartSettle - time.Millisecond)); !on || d <= 3*time.Second {
		t.Fatalf("within the settle time after the server answered: %v %v", on, d)
	}
	if on, _ := r.report(t0.Add(3*time.Second + restartSettle)); on || r.active() {
		t.Fatal("still reported (or tracked) after the settle time")
	}
	r.begin(t0)
	r.failed(restartGiveUp)
	if on, _ := r.report(t0.Add(time.Second)); on {
		t.Fatal("reported after the restart failed restartGiveUp times in a row")
	}
}

func TestControlFacts(t *testing.T) {
	out := []byte(`pg_control version number:            1300
Database cluster state:               in crash recovery
Latest checkpoint location:           0/3000060
Latest checkpoint's REDO location:    0/3000028
Minimum recovery ending location:     0/0
`)
	crash, lsn := controlFacts(parseControlData(out))
	if !crash || lsn != 0x3000060 {
		t.Errorf("crash %v lsn %X", crash, lsn)
	}
	out = []byte("Database cluster state:               shut down in recovery\nLatest checkpoint location:           0/3000060\nMinimum recovery ending location:     1/20\n")
	crash, lsn = controlFacts(parseControlData(out))
	if crash || lsn != 1<<32|0x20 {
		t.Errorf("crash %v lsn %X", crash, lsn)
	}
	if pglsn.Format(1<<32|0x20) != "1/20" {
		t.Errorf("formatLSN: %s", pglsn.Format(1<<32|0x20))
	}
}

func TestShellQuote(t *testing.T) {
	for in, want := range map[string]string{
		"-p":                         "-p",
		"listen_addresses=127.0.0.2": "listen_addresses=127.0.0.2",
		"cluster_name=my node":       "'cluster_name=my node'",
		"it's":                       `'it'\''s'`,
		"":                           "''",
		"a;rm -rf /":                 "'a;rm -rf /'",
	} {
		if got := shellQuote(in); got != want {
			t.Errorf("shellQuote(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestStatusRole(t *testing.T) {
	cases := []struct {
		s    Status
		want string
	}{
		{Status{Answering: true, PostmasterRunning: true}, "primary"},
		{Status{Answering: true, PostmasterRunning: true, ReadOnly: true}, "fenced"},
		{Status{Answering: true, PostmasterRunning: true, InRecovery: true, ReadOnly: true}, "replica"},
		{Status{PostmasterRunning: true, Starting: true}, "starting"},
		{Status{Fenced: true}, "fenced"},
		{Status{}, "stopped"},
		{Status{PostmasterRunning: true, ObserveError: "timeout"}, "unknown"},
	}
	for _, tc := range cases {
		if got := tc.s.Role(); got != tc.want {
			t.Errorf("%+v: role %s, want %s", tc.s, got, tc.want)
		}
	}
}
