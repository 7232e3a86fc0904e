// Package pgops performs the PostgreSQL steps of a failover on real servers: promote a standby
// (Promote), point the other standbys at the new primary (Repoint), wait until a standby
// streams from it (WaitStreamingFrom), and the data-loss arithmetic (DataLossBytes).
//
// Every operation is idempotent, so a new Raft leader resuming a saga can run it again.
// primary_conninfo usually holds a password: this package never logs it, and its errors never
// contain it.
package pgops

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/regentdb/regent/internal/pglsn"
	"github.com/regentdb/regent/pgconnect"
)

// Target is a node to act on and how to log in to it (a superuser: ALTER SYSTEM, pg_promote,
// CHECKPOINT and reading primary_conninfo need one). It is pgconnect.Target.
type Target = pgconnect.Target

// appName is the application_name of this package's sessions.
const appName = "regent-pgops"

// DefaultPromoteWait is how long pg_promote may take when ctx has no deadline.
const DefaultPromoteWait = 60 * time.Second

// Errors; match them with errors.Is.
var (
	// ErrNotStandby: Repoint or WaitStreamingFrom was asked of a node that is not in recovery.
	ErrNotStandby = errors.New("pgops: the node is not a standby")
	// ErrPromoteTimeout: pg_promote did not finish within its wait.
	ErrPromoteTimeout = errors.New("pgops: promotion did not finish in time")
	// ErrNoPrimaryConninfo: the standby has no primary_conninfo to rewrite.
	ErrNoPrimaryConninfo = errors.New("pgops: the standby has no primary_conninfo")
)

// timelineExpr is the timeline a primary writes: the first 8 hex digits of its current WAL
// file's name.
const timelineExpr = `('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint`

// promotionsSchema is where Promote records each promotion; the insert is the write that proves
// the node accepts writes.
const promotionsSchema = `CREATE SCHEMA IF NOT EXISTS regent;
CREATE TABLE IF NOT EXISTS regent.promotions (
    at       timestamptz NOT NULL DEFAULT now(),
    cluster  text NOT NULL,
    node     text NOT NULL,
    timeline bigint NOT NULL,
    lsn      pg_lsn NOT NULL
)`

// PromoteResult is what Promote found and did.
type PromoteResult struct {
	// AlreadyPrimary is true when the node was not in recovery, so pg_promote was not called.
	AlreadyPrimary bool
	// Timeline is the timeline the node writes after promotion (2 after a first failover).
	Timeline uint32
	// LSN is pg_current_wal_lsn() once the node was confirmed writable and checkpointed.
	LSN uint64
}

// Promote makes t a writable primary, idempotently:
//
//  1. ALTER SYSTEM RESET default_transaction_read_only and reload, so that a node fenced
//     earlier (and since rejoined as a standby) does not come up read-only;
//  2. if pg_is_in_recovery(), pg_promote(true, wait) with wait taken from ctx's deadline
//     (DefaultPromoteWait without one), which must return true;
//  3. wait until the node is out of recovery;
//  4. from a new session, a real write that must commit: a row in regent.promotions (the
//     schema and table are created when missing);
//  5. CHECKPOINT, so that a later pg_rewind of the old primary against this node sees the new
//     timeline.
//
// Promote makes t writable even when it was already a primary: never call it on a node that
// must stay fenced.
func Promote(ctx context.Context, t Target) (PromoteResult, error) {
	var res PromoteResult
	c, err := pgconnect.Connect(ctx, t, appName)
	if err != nil {
		return res, fmt.Errorf("promoting %s: %w; retry once it answers, or choose another candidate", t, err)
	}
	defer pgconnect.Close(c)
	if v, err := pgconnect.ServerVersion(ctx, c); err != nil {
		return res, fmt.Errorf("promoting %s: %w", t, err)
	} else if v < 120000 {
		return res, fmt.Errorf("promoting %s: PostgreSQL %d has no pg_promote(); regent needs 12 or later", t, v/10000)
	}
	if _, err := c.Exec(ctx, "ALTER SYSTEM RESET default_transaction_read_only"); err != nil {
		return res, fmt.Errorf("promoting %s: ALTER SYSTEM RESET default_transaction_read_only: %w; the role needs superuser", t, err)
	}
	if err := pgconnect.ReloadConf(ctx, c, t, appName); err != nil {
		return res, fmt.Errorf("promoting %s: %w", t, err)
	}
	var inRecovery bool
	if err := c.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil {
		return res, fmt.Errorf("promoting %s: asking whether it is in recovery: %w", t, err)
	}
	res.AlreadyPrimary = !inRecovery
	if inRecovery {
		wait := promoteWait(ctx)
		var ok bool
		err := c.QueryRow(ctx, "SELECT pg_promote(true, $1)", int32(wait/time.Second)).Scan(&ok)
		var pe *pgconn.PgError
		switch {
		case errors.As(err, &pe) && pe.Code == "55000":
			// "recovery is not in progress": promoted meanwhile (a concurrent call, or the
			// server finished a promotion requested earlier).
			res.AlreadyPrimary = true
		case err != nil:
			return res, fmt.Errorf("promoting %s: pg_promote: %w; see the server log", t, err)
		case !ok:
			return res, fmt.Errorf("%w: %s did not leave recovery within %s of pg_promote; see its log, then retry (Promote is idempotent)", ErrPromoteTimeout, t, wait)
		}
	}
	err = pgconnect.Poll(ctx, func(ctx context.Context) (bool, error) {
		var rec bool
		if err := c.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec); err != nil {
			return false, err
		}
		return !rec, nil
	})
	if err != nil {
		return res, fmt.Errorf("%w: %s is still in recovery: %w", ErrPromoteTimeout, t, err)
	}
	if err := confirmWritable(ctx, t); err != nil {
		return res, err
	}
	if _, err := c.Exec(ctx, "CHECKPOINT"); err != nil {
		return res, fmt.Errorf("promoting %s: CHECKPOINT after promotion: %w; the role needs superuser (or pg_checkpoint)", t, err)
	}
	var lsn string
	var tli int64
	if err := c.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text, "+timelineExpr).Scan(&lsn, &tli); err != nil {
		return res, fmt.Errorf("promoting %s: reading its WAL position: %w", t, err)
	}
	if res.LSN, err = pglsn.Parse(lsn); err != nil {
		return res, fmt.Errorf("promoting %s: %w", t, err)
	}
	res.Timeline = uint32(tli)
	return res, nil
}

// promoteWait is how long pg_promote may wait: ctx's remaining time less a second for the
// round trip, at least a second; DefaultPromoteWait without a deadline.
func promoteWait(ctx context.Context) time.Duration {
	dl, ok := ctx.Deadline()
	if !ok {
		return DefaultPromoteWait
	}
	w := (time.Until(dl) - time.Second).Truncate(time.Second)
	return max(w, time.Second)
}

// confirmWritable commits a row in regent.promotions from a new session, as a client would.
func confirmWritable(ctx context.Context, t Target) error {
	c, err := pgconnect.Connect(ctx, t, appName)
	if err != nil {
		return fmt.Errorf("promoting %s: connecting to confirm it accepts writes: %w", t, err)
	}
	defer pgconnect.Close(c)
	err = pgconnect.Poll(ctx, func(ctx context.Context) (bool, error) {
		if _, err := c.Exec(ctx, promotionsSchema); err != nil {
			if concurrentDDL(err) {
				return false, pgconnect.Retry(err) // another session created it at the same time
			}
			return false, err
		}
		_, err := c.Exec(ctx, "INSERT INTO regent.promotions (cluster, node, timeline, lsn) VALUES ($1, $2, "+timelineExpr+", pg_current_wal_lsn())", t.Cluster, t.Node)
		return err == nil, err
	})
	if err != nil {
		return fmt.Errorf("promoting %s: it is out of recovery but a write in a new session failed: %w; check default_transaction_read_only and disk space, then retry", t, err)
	}
	return nil
}

// concurrentDDL reports a race between two sessions creating the same objects.
func concurrentDDL(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "23505" || pe.Code == "42P06" || pe.Code == "42P07")
}

// Repoint makes the standby stream from the new primary at newPrimaryHost:newPrimaryPort. It
// reads the standby's primary_conninfo, replaces host and port (and hostaddr when present: with
// the new host when that is an IP address, else it is dropped so the name is resolved), keeps
// every other parameter (user, password, passfile, application_name, sslmode...) in order,
// writes it back with ALTER SYSTEM and reloads; the WAL receiver restarts on the new upstream
// (PostgreSQL 13 or later).
//
// When the standby has a primary_slot_name, Repoint first makes sure that physical slot exists
// on the new primary, connecting to it with the standby target's credentials. The slot reserves
// WAL from the new primary's last checkpoint on; older WAL the standby may still need is kept
// only by wal_keep_size.
//
// Repoint never logs primary_conninfo nor puts it (or its password) in an error. On error the
// standby's settings are unchanged unless the error says otherwise.
func Repoint(ctx context.Context, standby Target, newPrimaryHost string, newPrimaryPort uint16) (err error) {
	var secrets []string
	defer func() { err = scrub(err, secrets) }()
	if newPrimaryHost == "" || newPrimaryPort == 0 {
		return fmt.Errorf("repointing %s: the new primary's host and port must be set", standby)
	}
	c, err := pgconnect.Connect(ctx, standby, appName)
	if err != nil {
		return fmt.Errorf("repointing %s: %w; retry once it answers", standby, err)
	}
	defer pgconnect.Close(c)
	if v, err := pgconnect.ServerVersion(ctx, c); err != nil {
		return fmt.Errorf("repointing %s: %w", standby, err)
	} else if v < 130000 {
		return fmt.Errorf("repointing %s: PostgreSQL %d needs a restart to change primary_conninfo; regent repoints 13 or later", standby, v/10000)
	}
	var inRecovery bool
	var old, slot string
	if err := c.QueryRow(ctx, "SELECT pg_is_in_recovery(), current_setting('primary_conninfo'), current_setting('primary_slot_name')").Scan(&inRecovery, &old, &slot); err != nil {
		return fmt.Errorf("repointing %s: reading primary_conninfo and primary_slot_name: %w; the role needs superuser or pg_read_all_settings", standby, err)
	}
	secrets = append(secrets, old)
	if !inRecovery {
		return fmt.Errorf("%w: %s is not in recovery, so there is nothing to repoint; rejoin it as a standby first", ErrNotStandby, standby)
	}
	if strings.TrimSpace(old) == "" {
		return fmt.Errorf("%w: %s; regent keeps the user and password of the existing primary_conninfo, so set one on the standby first", ErrNoPrimaryConninfo, standby)
	}
	ci, err := ParseConninfo(old)
	if err != nil {
		return fmt.Errorf("repointing %s: its primary_conninfo cannot be parsed: %w; fix it on the standby", standby, err)
	}
	for _, k := range []string{"password", "sslpassword"} {
		if v, ok := ci.Get(k); ok && v != "" {
			secrets = append(secrets, v)
		}
	}
	if _, ok := ci.Get("hostaddr"); ok {
		if net.ParseIP(newPrimaryHost) != nil {
			ci.Set("hostaddr", newPrimaryHost)
		} else {
			ci.Delete("hostaddr")
		}
	}
	ci.Set("host", newPrimaryHost)
	ci.Set("port", strconv.Itoa(int(newPrimaryPort)))
	updated := ci.Encode()
	secrets = append(secrets, updated)

	if slot != "" {
		np := standby
		np.Host, np.Port, np.Node = newPrimaryHost, newPrimaryPort, "new primary"
		if err := EnsureSlot(ctx, np, slot); err != nil {
			return fmt.Errorf("repointing %s: %w", standby, err)
		}
	}
	// format(%L) quotes the value whatever standard_conforming_strings says.
	var stmt string
	if err := c.QueryRow(ctx, "SELECT format('ALTER SYSTEM SET primary_conninfo = %L', $1::text)", updated).Scan(&stmt); err != nil {
		return fmt.Errorf("repointing %s: quoting the new primary_conninfo: %w", standby, err)
	}
	if _, err := c.Exec(ctx, stmt); err != nil {
		return fmt.Errorf("repointing %s: ALTER SYSTEM SET primary_conninfo: %w; the role needs superuser (or ALTER SYSTEM on primary_conninfo)", standby, err)
	}
	if err := pgconnect.ReloadConf(ctx, c, standby, appName); err != nil {
		return fmt.Errorf("repointing %s: primary_conninfo was changed but %w; retry Repoint", standby, err)
	}
	return nil
}

// EnsureSlot creates the physical replication slot slot on np (the new primary) when it is
// missing, reserving WAL at once; an existing physical slot is fine, one of another kind an
// error. It is idempotent and safe against a concurrent creation.
func EnsureSlot(ctx context.Context, np Target, slot string) error {
	c, err := pgconnect.Connect(ctx, np, appName)
	if err != nil {
		return fmt.Errorf("creating replication slot %q on the new primary: %w", slot, err)
	}
	defer pgconnect.Close(c)
	var kind string
	err = c.QueryRow(ctx, "SELECT slot_type FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&kind)
	switch {
	case err == nil && kind == "physical":
		return nil
	case err == nil:
		return fmt.Errorf("replication slot %q on the new primary %s is %s, not physical; drop it or change the standby's primary_slot_name", slot, np, kind)
	case !errors.Is(err, pgx.ErrNoRows):
		return fmt.Errorf("looking for replication slot %q on the new primary %s: %w", slot, np, err)
	}
	if _, err := c.Exec(ctx, "SELECT pg_create_physical_replication_slot($1, true)", slot); err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "42710" {
			return nil // created meanwhile
		}
		return fmt.Errorf("creating replication slot %q on the new primary %s: %w; check max_replication_slots and the role's REPLICATION right", slot, np, err)
	}
	return nil
}

// scrub makes sure err's message holds none of secrets. An error that does is replaced by one
// with the secrets masked and no wrapped cause (which would still hold them).
func scrub(err error, secrets []string) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	leaked := false
	for _, s := range secrets {
		if s != "" && strings.Contains(msg, s) {
			msg = strings.ReplaceAll(msg, s, "REDACTED")
			leaked = true
		}
	}
	if !leaked {
		return err
	}
	return errors.New(msg)
}

// WaitStreamingFrom waits until the standby's WAL receiver reports status "streaming" from
// host:port (pg_stat_wal_receiver's sender_host and sender_port), or ctx ends. Hosts match when
// they are equal, resolve to a common address, or are both loopback (so "localhost" matches
// "127.0.0.1" and "::1"). Reading sender_host needs superuser or pg_read_all_stats.
func WaitStreamingFrom(ctx context.Context, standby Target, host string, port uint16) error {
	var c *pgx.Conn
	defer func() { pgconnect.Close(c) }()
	m := newHostMatcher(host)
	var seen string
	err := pgconnect.Poll(ctx, func(ctx context.Context) (bool, error) {
		if c == nil || c.IsClosed() {
			var err error
			if c, err = pgconnect.Connect(ctx, standby, appName); err != nil {
				return false, pgconnect.Retry(err)
			}
		}
		var inRecovery bool
		var status, senderHost *string
		var senderPort *int32
		err := c.QueryRow(ctx, `SELECT pg_is_in_recovery(), w.status, w.sender_host, w.sender_port
			FROM (SELECT 1) AS one LEFT JOIN pg_stat_wal_receiver w ON true`).Scan(&inRecovery, &status, &senderHost, &senderPort)
		if err != nil {
			pgconnect.Close(c)
			c = nil
			return false, pgconnect.Retry(err)
		}
		if !inRecovery {
			return false, fmt.Errorf("%w: %s left recovery while waiting for it to stream", ErrNotStandby, standby)
		}
		switch {
		case status == nil:
			seen = "no WAL receiver running"
			return false, nil
		case senderHost == nil || senderPort == nil:
			seen = fmt.Sprintf("WAL receiver %s, sender not visible (the role needs pg_read_all_stats)", *status)
			return false, nil
		}
		seen = fmt.Sprintf("WAL receiver %s from %s", *status, net.JoinHostPort(*senderHost, strconv.Itoa(int(*senderPort))))
		return *status == "streaming" && int(*senderPort) == int(port) && m.matches(ctx, *senderHost), nil
	})
	if err != nil {
		if seen == "" {
			seen = "nothing read"
		}
		return fmt.Errorf("waiting for %s to stream from %s: %w (last seen: %s); check the standby's log and that the new primary is ahead of it on a timeline it can follow", standby, net.JoinHostPort(host, strconv.Itoa(int(port))), err, seen)
	}
	return nil
}

// hostMatcher decides whether a sender_host names the wanted host.
type hostMatcher struct {
	want     string
	wantIPs  []net.IP
	resolved bool
	cache    map[string][]net.IP
}

func newHostMatcher(want string) *hostMatcher {
	return &hostMatcher{want: want, cache: map[string][]net.IP{}}
}

func (m *hostMatcher) matches(ctx context.Context, got string) bool {
	if strings.EqualFold(got, m.want) {
		return true
	}
	if !m.resolved {
		m.wantIPs, m.resolved = resolveHost(ctx, m.want), true
	}
	ips, ok := m.cache[got]
	if !ok {
		ips = resolveHost(ctx, got)
		m.cache[got] = ips
	}
	return ipsMatch(m.wantIPs, ips)
}

// resolveHost returns the addresses of a host name or IP address; none for a Unix socket
// directory or a name that does not resolve.
func resolveHost(ctx context.Context, h string) []net.IP {
	if ip := net.ParseIP(h); ip != nil {
		return []net.IP{ip}
	}
	if h == "" || strings.HasPrefix(h, "/") || strings.HasPrefix(h, "@") {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupIPAddr(ctx, h)
	if err != nil {
		return nil
	}
	ips := make([]net.IP, len(addrs))
	for i, a := range addrs {
		ips[i] = a.IP
	}
	return ips
}

// ipsMatch reports whether a and b share an address, or are both non-empty and all loopback.
func ipsMatch(a, b []net.IP) bool {
	if len(a) == 0 || len(b) == 0 {
		return false
	}
	for _, x := range a {
		for _, y := range b {
			if x.Equal(y) {
				return true
			}
		}
	}
	allLoopback := func(ips []net.IP) bool {
		for _, ip := range ips {
			if !ip.IsLoopback() {
				return false
			}
		}
		return true
	}
	return allLoopback(a) && allLoopback(b)
}

// DataLossBytes is how many bytes of WAL the old primary had written beyond what the promoted
// candidate had received: the size of the writes a failover loses. It is an estimate while
// oldPrimaryLSN is the old primary's last position seen by the witnesses, and exact once it is
// the old primary's real end of WAL (read after it rejoins). It is 0 when the candidate had
// everything (candidateReceivedLSN >= oldPrimaryLSN), never negative, and at most math.MaxInt64.
func DataLossBytes(oldPrimaryLSN, candidateReceivedLSN uint64) int64 {
	if candidateReceivedLSN >= oldPrimaryLSN {
		return 0
	}
	d := oldPrimaryLSN - candidateReceivedLSN
	if d > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(d)
}
