package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/regentdb/regent/alert"
	"github.com/regentdb/regent/coordinator"
	"github.com/regentdb/regent/dnspub"
	"github.com/regentdb/regent/fencing"
	"github.com/regentdb/regent/hook"
	"github.com/regentdb/regent/pgconnect"
	"github.com/regentdb/regent/pgops"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
	"github.com/regentdb/regent/spec"
)

// world carries out a saga's steps on real PostgreSQL nodes, DNS and operator commands, with
// this witness's credentials (which never leave it).
type world struct{ a *Agent }

var _ coordinator.World = world{}

// target is how this witness logs in to node n of cluster c.
func (w world) target(c *regentv1.Cluster, n *regentv1.NodeSpec) pgconnect.Target {
	pg := w.a.cfg.Postgres
	pw, err := pg.Password(n.GetHost(), uint16(n.GetPort()), pg.Database, pg.User)
	if err != nil {
		w.a.logger.Warn("read password file", "cluster", c.GetName(), "node", n.GetName(), "err", err)
	}
	return pgconnect.Target{Host: n.GetHost(), Port: uint16(n.GetPort()), User: pg.User, Database: pg.Database,
		Password: pw, SSLMode: pg.SSLMode, Node: n.GetName(), Cluster: c.GetName()}
}

func (w world) Fence(ctx context.Context, c *regentv1.Cluster, ev *regentv1.FailoverEvent) coordinator.FenceOutcome {
	pol := spec.WithDefaults(c.GetPolicy())
	old := nodeOf(c, ev.GetFromNode())
	if old == nil {
		return coordinator.FenceOutcome{Notes: []string{"old primary " + ev.GetFromNode() + " is not in the spec"}}
	}
	timeout := time.Duration(pol.GetCommandTimeoutMs()) * time.Millisecond
	// The SQL fence of a dead server must not hold the saga long: a probe timeout's worth of
	// connecting, times a few, is plenty to reach a live one.
	fctx, cancel := context.WithTimeout(ctx, timeout+time.Duration(4*pol.GetProbeTimeoutMs())*time.Millisecond)
	defer cancel()
	out := fencing.Fence(fctx, pol.GetFenceMethods(), w.target(c, old), hook.Command{
		Shell: pol.GetFenceCommand(), Env: coordinator.HookEnv(c, ev), Timeout: timeout,
	})
	res := coordinator.FenceOutcome{Method: out.Method}
	for _, at := range out.Attempts {
		note := at.Method + ": "
		if at.Err != "" {
			note += at.Err
		} else {
			note += "confirmed"
		}
		if at.Output != "" {
			note += " (" + at.Output + ")"
		}
		res.Notes = append(res.Notes, note)
	}
	return res
}

func (w world) Promote(ctx context.Context, c *regentv1.Cluster, n *regentv1.NodeSpec) (uint64, uint32, error) {
	r, err := pgops.Promote(ctx, w.target(c, n))
	if err != nil {
		return 0, 0, err
	}
	return r.LSN, r.Timeline, nil
}

func (w world) Repoint(ctx context.Context, c *regentv1.Cluster, standby, primary *regentv1.NodeSpec) error {
	t := w.target(c, standby)
	if err := pgops.Repoint(ctx, t, primary.GetHost(), uint16(primary.GetPort())); err != nil {
		return err
	}
	return pgops.WaitStreamingFrom(ctx, t, primary.GetHost(), uint16(primary.GetPort()))
}

func (w world) RevokeLease(ctx context.Context, c *regentv1.Cluster, ev *regentv1.FailoverEvent) (time.Time, error) {
	return w.a.revokeAtMajority(ctx, c, ev)
}

func (w world) Publish(ctx context.Context, c *regentv1.Cluster, primary *regentv1.NodeSpec, prevToken, newToken string) error {
	d := c.GetDns()
	k, ok := w.a.cfg.DNSKeys[d.GetTsigKey()]
	if !ok {
		return fmt.Errorf("cluster %s names TSIG key %q, which this witness's dns_keys lacks: add it to every witness's config", c.GetName(), d.GetTsigKey())
	}
	secret, err := k.Secret()
	if err != nil {
		return fmt.Errorf("TSIG key %q: %w", d.GetTsigKey(), err)
	}
	return dnspub.Publish(ctx, dnspub.Update{
		Server: d.GetServer(), Zone: d.GetZone(), Record: d.GetRecord(), TTL: d.GetTtl(), Target: primary.GetHost(),
		PrevToken: prevToken, NewToken: newToken,
		Key: dnspub.Key{Name: d.GetTsigKey(), Algorithm: k.Algorithm, Secret: secret},
	})
}

func (w world) RunHook(ctx context.Context, name, command string, env map[string]string, timeout time.Duration) (string, error) {
	r := hook.Run(ctx, hook.Command{Shell: command, Env: env, Timeout: timeout})
	if r.OK() {
		return r.Output, nil
	}
	if r.Err != nil {
		return r.Output, fmt.Errorf("%s command: %w", name, r.Err)
	}
	return r.Output, fmt.Errorf("%s command exited %d", name, r.ExitCode)
}

func (w world) Alert(kind, severity, cluster, message string, fields map[string]any) {
	w.a.alerts.Notify(alert.Alert{Kind: kind, Severity: severity, Cluster: cluster, Message: message, Fields: fields})
}

func nodeOf(c *regentv1.Cluster, name string) *regentv1.NodeSpec {
	for _, n := range c.GetNodes() {
		if n.GetName() == name {
			return n
		}
	}
	return nil
}

// enforceFence checks a node the log says is fenced and, when it answers as a writable primary
// (an old primary restarted by hand or by its init system), fences it again with SQL. It
// reports whether it had to.
func (w world) enforceFence(ctx context.Context, c *regentv1.Cluster, n *regentv1.NodeSpec) (bool, error) {
	t := w.target(c, n)
	conn, err := pgconnect.Connect(ctx, t, "regent-fence-check")
	if err != nil {
		return false, nil // down: nothing to enforce now
	}
	var inRecovery bool
	var readOnly string
	err = conn.QueryRow(ctx, "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only')").Scan(&inRecovery, &readOnly)
	pgconnect.Close(conn)
	if err != nil || inRecovery || readOnly == "on" {
		return false, nil
	}
	if err := fencing.FenceSQL(ctx, t); err != nil {
		return true, fmt.Errorf("re-fence %s: %w", t, err)
	}
	return true, nil
}
