package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/regentdb/regent/alert"
	"github.com/regentdb/regent/coordinator"
	"github.com/regentdb/regent/fsm"
	"github.com/regentdb/regent/internal/pglsn"
	"github.com/regentdb/regent/pgconnect"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
	"github.com/regentdb/regent/spec"
	"github.com/regentdb/regent/store"
)

// onSwitchover starts an operator's switchover (the API's handler on the leader): a planned
// change of primary to req.to that loses nothing (coordinator/switchover.go). It refuses,
// with FailedPrecondition and what to do, unless both nodes have keepers, the primary is up,
// the target is a healthy streaming standby that may be promoted, and no failover is open.
func (a *Agent) onSwitchover(ctx context.Context, req *regentv1.SwitchoverRequest, actor string) (*regentv1.FailoverEvent, error) {
	a.obsMu.Lock()
	f := a.leaderFailovers
	a.obsMu.Unlock()
	if f == nil {
		return nil, fmt.Errorf("%w: leadership is still being established", store.ErrNoLeader)
	}
	if req.GetTo() == "" {
		return nil, &spec.FieldError{Field: "to", Msg: "is required: name the standby to promote (regent switchover --cluster C --to NODE)"}
	}
	if req.GetTimeoutMs() < 0 {
		return nil, &spec.FieldError{Field: "timeout_ms", Msg: fmt.Sprintf("%d must not be negative (0 takes the policy's switchover_timeout)", req.GetTimeoutMs())}
	}
	st, _ := a.fsm.State()
	c, ok := a.fsm.Cluster(req.GetCluster())
	if !ok {
		return nil, fmt.Errorf("%w: cluster %q; list clusters with `regent status`", fsm.ErrNotFound, req.GetCluster())
	}
	if err := coordinator.SwitchoverPrecondition(st, c, req.GetTo()); err != nil {
		return nil, fmt.Errorf("%w: switchover of %s to %s refused: %v", fsm.ErrConflict, c.GetName(), req.GetTo(), err)
	}
	var oldLSN uint64
	for _, ns := range c.GetNodeStatus() {
		if ns.GetName() == c.GetPrimary() {
			oldLSN = ns.GetCurrentLsn()
		}
	}
	reason := "switchover by " + actor
	if req.GetReason() != "" {
		reason += ": " + req.GetReason()
	}
	res, err := a.store.Propose(f.ctx, regentv1.CommandType_COMMAND_TYPE_START_FAILOVER, &regentv1.StartFailoverCommand{
		Cluster: c.GetName(), FromNode: c.GetPrimary(), ToNode: req.GetTo(), TriggerReason: reason, Term: a.store.Term(),
		Manual: true, OldPrimaryLsn: oldLSN, Switchover: true, SwitchoverTimeoutMs: req.GetTimeoutMs(),
	}, actor)
	if err != nil {
		return nil, err
	}
	if res.Err != nil {
		return nil, res.Err
	}
	a.alerts.Notify(alert.Alert{Kind: "switchover_started", Severity: alert.SeverityWarning, Cluster: c.GetName(),
		Message: fmt.Sprintf("switchover %d of %s started: %s → %s (%s)", res.Event.GetId(), c.GetName(), c.GetPrimary(), req.GetTo(), reason)})
	// The saga outlives the request: it runs under the leader session, not the RPC.
	f.drive(res.Event.GetId())
	return res.Event, nil
}

// switchoverCheckpointTimeout bounds the CHECKPOINT run on the old primary before its fence.
const switchoverCheckpointTimeout = 10 * time.Second

// FenceForSwitchover: a CHECKPOINT on the old primary while it still takes writes (so that the
// shutdown checkpoint of the demotion has little left to write, which shortens the time
// without a writable primary), then the keeper's FENCE, then the keeper's reading of its WAL
// end. An old primary already in recovery (demoted by an earlier attempt of this event)
// answers its WAL position as a standby.
func (w world) FenceForSwitchover(ctx context.Context, c *regentv1.Cluster, ev *regentv1.FailoverEvent) (uint64, string, error) {
	old := nodeOf(c, ev.GetFromNode())
	if old == nil {
		return 0, "", fmt.Errorf("old primary %s is not in the cluster spec", ev.GetFromNode())
	}
	st, err := keeperStatus(ctx, old)
	if err != nil {
		return 0, "", fmt.Errorf("asking the keeper of %s: %w", old.GetName(), err)
	}
	if st.GetInRecovery() {
		return st.GetFinalLsn(), fmt.Sprintf("%s is already a standby (demoted earlier); its WAL ends at %s", old.GetName(), pglsn.Format(st.GetFinalLsn())), nil
	}
	cctx, cancel := context.WithTimeout(ctx, switchoverCheckpointTimeout)
	cpStart := time.Now()
	cpErr := w.checkpoint(cctx, c, old)
	cancel()
	cpNote := fmt.Sprintf("CHECKPOINT before the fence took %v", time.Since(cpStart).Round(time.Millisecond))
	if cpErr != nil {
		cpNote = fmt.Sprintf("CHECKPOINT before the fence failed (%v); the shutdown checkpoint will be longer", cpErr)
	}
	resp, err := instructKeeper(ctx, c, old, regentv1.KeeperAction_KEEPER_ACTION_FENCE, ev.GetTerm(), ev.GetId(), nil)
	if err != nil {
		return 0, "", err
	}
	if !resp.GetDone() {
		return 0, "", fmt.Errorf("the keeper of %s did not fence it: %s", old.GetName(), resp.GetDetail())
	}
	st, err = keeperStatus(ctx, old)
	if err != nil {
		return 0, "", fmt.Errorf("fenced, but reading the WAL end from the keeper of %s failed: %w", old.GetName(), err)
	}
	return st.GetFinalLsn(), fmt.Sprintf("%s; the keeper fenced %s (%s); WAL end %s", cpNote, old.GetName(), resp.GetDetail(), pglsn.Format(st.GetFinalLsn())), nil
}

// checkpoint runs CHECKPOINT on node n with this witness's login.
func (w world) checkpoint(ctx context.Context, c *regentv1.Cluster, n *regentv1.NodeSpec) error {
	conn, err := pgconnect.Connect(ctx, w.target(c, n), "regent-switchover")
	if err != nil {
		return err
	}
	defer pgconnect.Close(conn)
	_, err = conn.Exec(ctx, "CHECKPOINT")
	return err
}

// ReplayedLSN reads pg_last_wal_replay_lsn() on node n; a node not in recovery is an error.
func (w world) ReplayedLSN(ctx context.Context, c *regentv1.Cluster, n *regentv1.NodeSpec) (uint64, error) {
	conn, err := pgconnect.Connect(ctx, w.target(c, n), "regent-switchover")
	if err != nil {
		return 0, err
	}
	defer pgconnect.Close(conn)
	var lsn *string
	if err := conn.QueryRow(ctx, "SELECT CASE WHEN pg_is_in_recovery() THEN coalesce(pg_last_wal_replay_lsn()::text, '0/0') END").Scan(&lsn); err != nil {
		return 0, fmt.Errorf("reading the replay position of %s: %w", n.GetName(), err)
	}
	if lsn == nil {
		return 0, fmt.Errorf("%s is not in recovery: it is not a standby that can catch up", n.GetName())
	}
	return pglsn.Parse(*lsn)
}

// Demote sends the keeper of the old primary DEMOTE, to follow upstream, and returns the final
// LSN it measured.
func (w world) Demote(ctx context.Context, c *regentv1.Cluster, ev *regentv1.FailoverEvent, old, upstream *regentv1.NodeSpec) (uint64, string, error) {
	resp, err := instructKeeper(ctx, c, old, regentv1.KeeperAction_KEEPER_ACTION_DEMOTE, ev.GetTerm(), ev.GetId(), upstream)
	if err != nil {
		return 0, "", err
	}
	if !resp.GetDone() {
		return 0, "", fmt.Errorf("the keeper of %s did not demote it: %s", old.GetName(), resp.GetDetail())
	}
	if resp.GetFinalLsn() == 0 {
		return 0, "", fmt.Errorf("the keeper of %s demoted it but reported no final LSN (%s); a keeper this old cannot take part in a switchover", old.GetName(), resp.GetDetail())
	}
	var d struct {
		Shutdown    string `json:"shutdown"`
		Upstream    string `json:"upstream"`
		Slot        string `json:"slot"`
		StopMs      int64  `json:"stop_ms"`
		MeasureMs   int64  `json:"measure_ms"`
		ConfigureMs int64  `json:"configure_ms"`
		StartMs     int64  `json:"start_ms"`
		Repeated    bool   `json:"repeated"`
	}
	note := fmt.Sprintf("the keeper demoted %s: final LSN %s", old.GetName(), pglsn.Format(resp.GetFinalLsn()))
	if json.Unmarshal([]byte(resp.GetDetail()), &d) == nil {
		if d.Shutdown != "" {
			note += ", " + d.Shutdown + " shutdown"
		}
		note += ", standby of " + d.Upstream
		if d.Slot != "" {
			note += " through slot " + d.Slot
		}
		if d.Repeated {
			note += " (as recorded by an earlier DEMOTE of this event)"
		} else {
			note += fmt.Sprintf(" (stop %dms, final LSN %dms, configure %dms, start %dms)", d.StopMs, d.MeasureMs, d.ConfigureMs, d.StartMs)
		}
	}
	return resp.GetFinalLsn(), note, nil
}

// RestorePrimary makes the old primary of an aborted switchover writable again through its
// keeper: started if it is down, promoted back if it had already been demoted (a new timeline
// of its own, which its standbys follow: they have nothing it lacks), else unfenced.
func (w world) RestorePrimary(ctx context.Context, c *regentv1.Cluster, ev *regentv1.FailoverEvent) (string, error) {
	old := nodeOf(c, ev.GetFromNode())
	if old == nil {
		return "", fmt.Errorf("old primary %s is not in the cluster spec", ev.GetFromNode())
	}
	act := func(a regentv1.KeeperAction) (string, error) {
		resp, err := instructKeeper(ctx, c, old, a, ev.GetTerm(), ev.GetId(), nil)
		if err != nil {
			return "", err
		}
		if !resp.GetDone() {
			return "", fmt.Errorf("%s: %s", strings.TrimPrefix(a.String(), "KEEPER_ACTION_"), resp.GetDetail())
		}
		return resp.GetDetail(), nil
	}
	st, err := keeperStatus(ctx, old)
	if err != nil {
		return "", fmt.Errorf("asking the keeper of %s: %w", old.GetName(), err)
	}
	var notes []string
	if !st.GetPostmasterRunning() {
		d, err := act(regentv1.KeeperAction_KEEPER_ACTION_RESTART)
		if err != nil {
			return "", err
		}
		notes = append(notes, "restarted ("+d+")")
		if st, err = keeperStatus(ctx, old); err != nil {
			return "", fmt.Errorf("asking the keeper of %s: %w", old.GetName(), err)
		}
	}
	if st.GetInRecovery() {
		d, err := act(regentv1.KeeperAction_KEEPER_ACTION_PROMOTE)
		if err != nil {
			return "", err
		}
		notes = append(notes, "promoted back after its demotion ("+d+")")
	} else {
		d, err := act(regentv1.KeeperAction_KEEPER_ACTION_UNFENCE)
		if err != nil {
			return "", err
		}
		notes = append(notes, "unfenced ("+d+")")
	}
	return fmt.Sprintf("the old primary %s takes writes again: %s", old.GetName(), strings.Join(notes, "; ")), nil
}
