package probe

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

func TestSecretsStayOut(t *testing.T) {
	const secret = "hunter2-very-secret"
	tg := Target{Cluster: "c", Node: "n1", Host: "db1", Port: 5432, User: "regent", Password: secret, SSLMode: "require"}
	res := Result{Target: tg, Err: errors.New("boom")}
	var logBuf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&logBuf, nil))
	log.Info("probe", "target", tg, "result", res)
	log.Info("probe", "target", &tg)
	outputs := []string{
		fmt.Sprint(tg), fmt.Sprintf("%v %+v %#v %s", tg, tg, tg, tg),
		fmt.Sprintf("%v %+v %s", res, res, res),
		fmt.Sprintf("%v %+v", &tg, &tg),
		logBuf.String(),
	}
	for _, out := range outputs {
		if strings.Contains(out, secret) {
			t.Errorf("password leaked: %s", out)
		}
	}
	if !strings.Contains(fmt.Sprintf("%#v", tg), "REDACTED") {
		t.Errorf("%%#v does not say the password was redacted: %#v", tg)
	}
	if got := tg.redacted().Password; got != "" {
		t.Errorf("redacted target keeps password %q", got)
	}
	// The connection string does carry it, quoted.
	tg.Password = `it's \ here`
	if cs := tg.connString("app"); !strings.Contains(cs, `password='it\'s \\ here'`) {
		t.Errorf("connString = %s", cs)
	}
}

func TestTargetValidate(t *testing.T) {
	good := Target{Cluster: "c", Node: "n", Host: "h", Port: 1, User: "u"}
	if err := good.Validate(); err != nil {
		t.Fatalf("valid target refused: %v", err)
	}
	tests := []struct {
		name   string
		mutate func(*Target)
		want   string
	}{
		{"no node", func(t *Target) { t.Node = "" }, "node name is empty"},
		{"no host", func(t *Target) { t.Host = "" }, "host is empty"},
		{"no port", func(t *Target) { t.Port = 0 }, "port is 0"},
		{"no user", func(t *Target) { t.User = "" }, "user is empty"},
		{"bad sslmode", func(t *Target) { t.SSLMode = "maybe" }, `sslmode "maybe"`},
	}
	for _, tt := range tests {
		tg := good
		tt.mutate(&tg)
		err := tg.Validate()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: Validate() = %v; want an error saying %q", tt.name, err, tt.want)
		}
	}
}

func TestResultRole(t *testing.T) {
	if got := (Result{}).Role(); got != "" {
		t.Errorf("unreachable role = %q", got)
	}
	if got := (Result{Reachable: true}).Role(); got != "primary" {
		t.Errorf("primary role = %q", got)
	}
	r := Result{Reachable: true, InRecovery: true, CurrentLSN: 5, ReplayLSN: 3}
	if r.Role() != "replica" || r.Position() != 3 {
		t.Errorf("replica role = %q, position %d", r.Role(), r.Position())
	}
}
