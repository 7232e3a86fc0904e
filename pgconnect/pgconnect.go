// Package pgconnect is the one place that says how regent logs in to a PostgreSQL node to act on
// it (fence, unfence, promote, repoint), plus the few steps those actions share: waiting for a
// configuration reload to take effect and polling a condition with a deadline.
//
// A Target's password is a secret: String, GoString and LogValue leave it out, and errors from
// Connect never contain it (the password is never part of a connection string here).
package pgconnect

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// ConnectTimeout bounds one connection attempt when ctx allows longer (or has no deadline),
// so that a node that silently drops packets cannot hold an action for minutes.
const ConnectTimeout = 10 * time.Second

// Target is one PostgreSQL node to act on and how to log in to it.
type Target struct {
	// Host is a host name or IP address; Port its PostgreSQL port.
	Host string
	Port uint16
	// User and Database to log in as and to (Database defaults to "postgres"). Actions need a
	// superuser: ALTER SYSTEM, pg_terminate_backend of every role's sessions, pg_promote,
	// CHECKPOINT and reading primary_conninfo.
	User, Database string
	// Password for User; empty for trust, passfile-less peer setups or certificates.
	Password string
	// SSLMode is a libpq sslmode ("disable", "allow", "prefer", "require", "verify-ca",
	// "verify-full"); empty means "prefer".
	SSLMode string
	// Node and Cluster name the node in messages.
	Node, Cluster string
}

// Addr returns "host:port".
func (t Target) Addr() string { return net.JoinHostPort(t.Host, strconv.Itoa(int(t.Port))) }

// String returns "cluster/node (host:port)", never the password.
func (t Target) String() string {
	name := t.Node
	if t.Cluster != "" {
		name = t.Cluster + "/" + t.Node
	}
	if name == "" {
		return t.Addr()
	}
	return name + " (" + t.Addr() + ")"
}

// GoString is like %#v with the password redacted.
func (t Target) GoString() string {
	if t.Password != "" {
		t.Password = "REDACTED"
	}
	type plain Target // no methods: avoids recursion
	return fmt.Sprintf("pgconnect.Target%+v", plain(t))
}

// LogValue logs the target without its password.
func (t Target) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("cluster", t.Cluster),
		slog.String("node", t.Node),
		slog.String("addr", t.Addr()),
	)
}

var validSSLModes = map[string]bool{"": true, "disable": true, "allow": true, "prefer": true, "require": true, "verify-ca": true, "verify-full": true}

// Validate checks that the target names a node regent can connect to.
func (t Target) Validate() error {
	var errs []error
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
		return fmt.Errorf("target %s is invalid: %w", t, errors.Join(errs...))
	}
	return nil
}

// quote quotes a value for a keyword/value connection string.
func quote(v string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

// Connect opens a connection to the target, reporting appName as its application_name. The
// connection string it builds holds no password (the password is set on the parsed config), so
// no parse or connect error can contain it. The caller closes the connection.
func Connect(ctx context.Context, t Target, appName string) (*pgx.Conn, error) {
	if err := t.Validate(); err != nil {
		return nil, err
	}
	db := t.Database
	if db == "" {
		db = "postgres"
	}
	parts := []string{
		"host=" + quote(t.Host),
		"port=" + strconv.Itoa(int(t.Port)),
		"user=" + quote(t.User),
		"dbname=" + quote(db),
		"connect_timeout=" + strconv.Itoa(int(ConnectTimeout/time.Second)),
		// A PGTARGETSESSIONATTRS in the environment must not make a standby unreachable.
		"target_session_attrs=any",
		"application_name=" + quote(appName),
	}
	if t.SSLMode != "" {
		parts = append(parts, "sslmode="+quote(t.SSLMode))
	}
	cfg, err := pgx.ParseConfig(strings.Join(parts, " "))
	if err != nil {
		return nil, fmt.Errorf("connection settings for %s: %w", t, err)
	}
	if t.Password != "" {
		cfg.Password = t.Password
	}
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", t, err)
	}
	return c, nil
}

// Close closes c without waiting long for a server that no longer answers.
func Close(c *pgx.Conn) {
	if c == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = c.Close(ctx)
}

// Poll calls cond until it returns true or a non-retryable error, or ctx ends. It polls every
// 10ms at first, backing off to every 200ms. An error from cond wrapped with Retry is kept and
// polling goes on; on timeout Poll returns ctx's error together with the last such error (both
// wrapped). Any other error from cond stops polling and is returned as is.
func Poll(ctx context.Context, cond func(ctx context.Context) (bool, error)) error {
	interval := 10 * time.Millisecond
	var last error
	for {
		ok, err := cond(ctx)
		if ok {
			return nil
		}
		if err != nil {
			var r *retryError
			if !errors.As(err, &r) {
				return err
			}
			last = r.err
		}
		t := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			t.Stop()
			if last != nil {
				return fmt.Errorf("%w (last: %w)", ctx.Err(), last)
			}
			return ctx.Err()
		case <-t.C:
		}
		interval = min(2*interval, 200*time.Millisecond)
	}
}

// Retry marks err as worth another try for Poll.
func Retry(err error) error {
	if err == nil {
		return nil
	}
	return &retryError{err: err}
}

type retryError struct{ err error }

func (r *retryError) Error() string { return r.err.Error() }
func (r *retryError) Unwrap() error { return r.err }

// ReloadConf asks the server c is connected to to reload its configuration (pg_reload_conf())
// and waits until the postmaster has done so, that is until a new session on t reports a
// configuration load time at or after the request. Sessions started from then on see the new
// settings; sessions that were already open pick them up between statements.
func ReloadConf(ctx context.Context, c *pgx.Conn, t Target, appName string) error {
	var before time.Time
	var ok bool
	if err := c.QueryRow(ctx, "SELECT clock_timestamp()").Scan(&before); err != nil {
		return fmt.Errorf("read the clock of %s before reloading its configuration: %w", t, err)
	}
	if err := c.QueryRow(ctx, "SELECT pg_reload_conf()").Scan(&ok); err != nil {
		return fmt.Errorf("reload the configuration of %s (pg_reload_conf needs a superuser or EXECUTE on it): %w", t, err)
	}
	if !ok {
		return fmt.Errorf("reload the configuration of %s: pg_reload_conf() returned false (could not signal the postmaster); see the server log", t)
	}
	err := Poll(ctx, func(ctx context.Context) (bool, error) {
		var loaded time.Time
		n, err := Connect(ctx, t, appName)
		if err != nil {
			return false, Retry(err)
		}
		defer Close(n)
		if err := n.QueryRow(ctx, "SELECT pg_conf_load_time()").Scan(&loaded); err != nil {
			return false, Retry(err)
		}
		return !loaded.Before(before), nil
	})
	if err != nil {
		return fmt.Errorf("wait for %s to reload its configuration: %w", t, err)
	}
	return nil
}

// ServerVersion returns the server's server_version_num, e.g. 150004.
func ServerVersion(ctx context.Context, c *pgx.Conn) (int, error) {
	var s string
	if err := c.QueryRow(ctx, "SHOW server_version_num").Scan(&s); err != nil {
		return 0, fmt.Errorf("read server_version_num: %w", err)
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("server_version_num %q is not a number: %w", s, err)
	}
	return n, nil
}
