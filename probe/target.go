package probe

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
)

// Target is one PostgreSQL node to probe and how to log in to it.
//
// Password is a secret: String, GoString and LogValue leave it out, and
// Results carry the target without it. Reading it (from a libpq passfile,
// say) is the caller's job.
type Target struct {
	// Cluster and Node name the node; together they identify the target
	// (see Key).
	Cluster, Node string
	// Host is a host name or IP address; Port its PostgreSQL port.
	Host string
	Port uint16 // see Host
	// User and Database to log in as and to. The role needs pg_monitor
	// (or superuser) to see the WAL receiver's sender address.
	User, Database string
	// Password for User; empty for trust or certificate authentication.
	Password string
	// SSLMode is a libpq sslmode ("disable", "prefer", "require",
	// "verify-ca", "verify-full"); empty means "prefer".
	SSLMode string
	// ExpectedSystemID, when not 0, is the system identifier the node's
	// cluster must have; a server answering with another one is reported
	// as ClassWrongSystem and unreachable.
	ExpectedSystemID uint64
}

// Key identifies the target among others: "cluster/node".
func (t Target) Key() string { return t.Cluster + "/" + t.Node }

// Addr returns "host:port".
func (t Target) Addr() string { return net.JoinHostPort(t.Host, strconv.Itoa(int(t.Port))) }

// String returns "cluster/node (host:port)"; never the password.
func (t Target) String() string { return t.Key() + " (" + t.Addr() + ")" }

// GoString is like %#v but with the password redacted.
func (t Target) GoString() string {
	r := t.redacted()
	if t.Password != "" {
		r.Password = "REDACTED"
	}
	type plain Target // no methods: avoids recursion
	return fmt.Sprintf("probe.Target%+v", plain(r))
}

// LogValue logs the target without its password.
func (t Target) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("cluster", t.Cluster),
		slog.String("node", t.Node),
		slog.String("addr", t.Addr()),
	)
}

// redacted returns the target without its password.
func (t Target) redacted() Target {
	t.Password = ""
	return t
}

var validSSLModes = map[string]bool{"": true, "disable": true, "allow": true, "prefer": true, "require": true, "verify-ca": true, "verify-full": true}

// Validate checks that the target can be probed.
func (t Target) Validate() error {
	var errs []error
	if t.Node == "" {
		errs = append(errs, errors.New("node name is empty"))
	}
	if t.Host == "" {
		errs = append(errs, errors.New("host is empty"))
	}
	if t.Port == 0 {
		errs = append(errs, errors.New("port is 0"))
	}
	if t.User == "" {
		errs = append(errs, errors.New("user is empty"))
	}
	if !validSSLModes[t.SSLMode] {
		errs = append(errs, fmt.Errorf("sslmode %q is not one of disable, allow, prefer, require, verify-ca, verify-full", t.SSLMode))
	}
	if len(errs) > 0 {
		return fmt.Errorf("probe: target %s is invalid: %w", t, errors.Join(errs...))
	}
	return nil
}

// connString builds a keyword/value connection string for the target.
func (t Target) connString(appName string) string {
	var b strings.Builder
	kv := func(k, v string) {
		if v == "" {
			return
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(k)
		b.WriteString("='")
		b.WriteString(strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v))
		b.WriteByte('\'')
	}
	kv("host", t.Host)
	kv("port", strconv.Itoa(int(t.Port)))
	kv("user", t.User)
	db := t.Database
	if db == "" {
		db = "postgres"
	}
	kv("dbname", db)
	kv("sslmode", t.SSLMode)
	kv("application_name", appName)
	kv("password", t.Password)
	return b.String()
}

// fingerprint identifies the connection parameters: a kept connection is
// reused only while they stay the same.
func (t Target) fingerprint() string {
	return strings.Join([]string{t.Host, strconv.Itoa(int(t.Port)), t.User, t.Database, t.Password, t.SSLMode}, "\x00")
}
