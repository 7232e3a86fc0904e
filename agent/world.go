package agent

import (
	"context"
	"fmt"
	"sync/atomic"
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

// Fence fences the old primary of event ev: first through its keeper, when it has one (a STOP
// the keeper confirms — PostgreSQL stopped and kept stopped — is a fence, method "keeper", with
// no lease to wait out), then with the policy's methods (SQL, command). Nothing confirming, the
// saga falls back to revoking the lease.
func (w world) Fence(ctx context.Context, c *regentv1.Cluster, ev *regentv1.FailoverEvent) coordinator.FenceOutcome {
	pol := spec.WithDefaults(c.GetPolicy())
	old := nodeOf(c, ev.GetFromNode())
	if old == nil {
		return coordinator.FenceOutcome{Notes: []string{"old primary " + ev.GetFromNode() + " is not in the spec"}}
	}
	// An automatic failover that may fall back to the lease revokes it at once, alongside the
	// fence methods, and stops trying them once the old lease has surely run out: the wait
	// counts from the revokers' last grants, so for a host cut off without a trace (connections
	// that neither answer nor fail) the lease is over about lease_ttl after the cut, long before
	// a keeper call and an SQL fence have timed out one after the other. RevokeLease takes this
	// revocation up. (A manual failover of a live primary, or fence_fallback refuse, must not
	// lose the old primary its lease unless a fence confirms: no early revocation there.)
	mctx, stop := context.WithCancel(ctx)
	defer stop()
	var lapsed atomic.Bool
	if !ev.GetManual() && pol.GetFenceFallback() == spec.FallbackWait {
		rev := w.a.startRevocation(ctx, c, ev)
		ttl := time.Duration(pol.GetLeaseTtlMs()) * time.Millisecond
		go func() {
			select {
			case <-rev.done:
			case <-mctx.Done():
				return
			}
			if rev.err != nil {
				return
			}
			t := time.NewTimer(time.Until(fencing.RevocationSafeAfterGrants(rev.acks, ttl, fencing.DefaultDrift)))
			defer t.Stop()
			select {
			case <-t.C:
				lapsed.Store(true)
				stop()
			case <-mctx.Done():
			}
		}()
	}
	out := w.fence(mctx, c, ev, old, pol)
	if out.Method != "" {
		w.a.takeRevocation(ev.GetId(), c.GetLeaseEpoch()) // not needed: a fence confirmed
	}
	if lapsed.Load() && out.Method == "" {
		out.Notes = append(out.Notes, "stopped trying: the old lease had run out (revoked at a majority at once)")
	}
	return out
}

// fence tries the old primary's keeper, then the policy's methods, until one confirms or ctx
// ends.
func (w world) fence(ctx context.Context, c *regentv1.Cluster, ev *regentv1.FailoverEvent, old *regentv1.NodeSpec, pol *regentv1.Policy) coordinator.FenceOutcome {
	var keeperNote string
	if hasKeeper(old) {
		ok, note := w.fenceByKeeper(ctx, c, old, ev, pol)
		if ok {
			return coordinator.FenceOutcome{Method: methodKeeper, Notes: []string{note}}
		}
		keeperNote = note
		if ctx.Err() != nil {
			return coordinator.FenceOutcome{Notes: []string{note}}
		}
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
	if keeperNote != "" {
		res.Notes = append(res.Notes, keeperNote)
	}
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

// methodKeeper is the fence method recorded when the old primary's keeper confirmed a STOP.
const methodKeeper = "keeper"

// fenceByKeeper asks the old primary's keeper to STOP PostgreSQL with the event's fencing token
// and reports whether it confirmed that the server is stopped and stays stopped, with a note
// for the event. The attempt is bounded by the policy's lease_ttl: a keeper that cannot answer
// sooner (its host is gone) is no faster than waiting out the lease, which follows.
func (w world) fenceByKeeper(ctx context.Context, c *regentv1.Cluster, old *regentv1.NodeSpec, ev *regentv1.FailoverEvent, pol *regentv1.Policy) (bool, string) {
	kctx, cancel := context.WithTimeout(ctx, time.Duration(pol.GetLeaseTtlMs())*time.Millisecond)
	defer cancel()
	start := time.Now()
	resp, err := instructKeeper(kctx, c, old, regentv1.KeeperAction_KEEPER_ACTION_STOP, ev.GetTerm(), ev.GetId(), nil)
	took := time.Since(start).Round(time.Millisecond)
	switch {
	case err != nil:
		return false, fmt.Sprintf("keeper: STOP not confirmed after %v: %v", took, err)
	case !resp.GetDone() || !resp.GetStopped():
		return false, fmt.Sprintf("keeper: STOP not confirmed after %v: %s", took, resp.GetDetail())
	}
	return true, fmt.Sprintf("keeper: PostgreSQL stopped and kept stopped (%s; %v)", resp.GetDetail(), took)
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

// RevokeLease revokes the old primary's lease epoch at a majority of witnesses and returns
// fencing.GrantBound of their acknowledgements: the local time from which lease_ttl ×
// (1 + drift) surely covers the old lease (no later than the last acknowledgement, and earlier
// by about as long as the revokers had stopped granting).
func (w world) RevokeLease(ctx context.Context, c *regentv1.Cluster, ev *regentv1.FailoverEvent) (time.Time, error) {
	if rev := w.a.takeRevocation(ev.GetId(), c.GetLeaseEpoch()); rev != nil {
		// Started by Fence; a failed one is done again here.
		select {
		case <-rev.done:
			if rev.err == nil {
				return fencing.GrantBound(rev.acks, fencing.DefaultDrift), nil
			}
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		}
	}
	acks, err := w.a.revokeAtMajority(ctx, c, ev)
	if err != nil {
		return time.Time{}, err
	}
	return fencing.GrantBound(acks, fencing.DefaultDrift), nil
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
