package coordinator

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/regentdb/regent/fsm"
	"github.com/regentdb/regent/internal/pglsn"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
	"github.com/regentdb/regent/spec"
)

// SwitchoverTimeout is how long a switchover waits for its target to catch up: the event's own
// timeout (the operator's --timeout), else the cluster policy's switchover_timeout.
func SwitchoverTimeout(c *regentv1.Cluster, ev *regentv1.FailoverEvent) time.Duration {
	if ms := ev.GetSwitchoverTimeoutMs(); ms > 0 {
		return time.Duration(ms) * time.Millisecond
	}
	return time.Duration(spec.WithDefaults(c.GetPolicy()).GetSwitchoverTimeoutMs()) * time.Millisecond
}

// SwitchoverPrecondition says why a switchover of c to target cannot start now (nil: it can):
// no failover of the cluster may be open; target must be another node of the cluster, not
// tagged nofailover; both it and the primary need a keeper (keeper_addr); the primary must be
// reachable by a majority of the witnesses' committed votes; and the target must be a
// standby reachable the same way, of this cluster's system, streaming, with replay not paused.
func SwitchoverPrecondition(st *regentv1.State, c *regentv1.Cluster, target string) error {
	for _, ev := range st.GetFailoverEvents() {
		if ev.GetCluster() == c.GetName() && ev.GetStep() != regentv1.FailoverStep_FAILOVER_STEP_COMPLETED &&
			ev.GetStep() != regentv1.FailoverStep_FAILOVER_STEP_ABORTED {
			return fmt.Errorf("failover %d is still at step %s; wait until it completes or aborts (regent events --cluster %s --watch)",
				ev.GetId(), fsm.StepName(ev.GetStep()), c.GetName())
		}
	}
	to := node(c, target)
	switch {
	case to == nil:
		var names []string
		for _, n := range c.GetNodes() {
			names = append(names, n.GetName())
		}
		return fmt.Errorf("%s is not a node of the cluster (nodes: %s)", target, strings.Join(names, ", "))
	case target == c.GetPrimary():
		return fmt.Errorf("%s is already the primary; name one of its standbys", target)
	}
	for _, n := range []*regentv1.NodeSpec{node(c, c.GetPrimary()), to} {
		if n != nil && n.GetKeeperAddr() == "" {
			return fmt.Errorf("%s has no keeper (keeper_addr in the cluster spec): a zero-loss switchover needs a keeper beside the primary and the target; run regent keeper there, or use regent failover", n.GetName())
		}
	}
	for _, tag := range to.GetTags() {
		if tag == "nofailover" {
			return fmt.Errorf("%s is tagged nofailover; remove the tag from the spec or name another standby", target)
		}
	}
	if !reachable(c, c.GetPrimary()) {
		return fmt.Errorf("the primary %s is not reachable by a majority of witnesses; a switchover needs it up (use regent failover when it is down)", c.GetPrimary())
	}
	var ns *regentv1.NodeStatus
	for _, s := range c.GetNodeStatus() {
		if s.GetName() == target {
			ns = s
		}
	}
	switch {
	case ns == nil || !reachable(c, target):
		return fmt.Errorf("%s is not reachable by a majority of witnesses; wait until it is, or name another standby", target)
	case ns.GetWrongSystem():
		return fmt.Errorf("%s answers with another cluster's system identifier; fix the node's address in the spec", target)
	case ns.GetRole() != regentv1.NodeRole_NODE_ROLE_REPLICA:
		return fmt.Errorf("%s is not a standby (role %s); name a streaming standby", target, strings.ToLower(strings.TrimPrefix(ns.GetRole().String(), "NODE_ROLE_")))
	case ns.GetWalReceiverStatus() != "streaming":
		return fmt.Errorf("%s is not streaming (WAL receiver %q); wait until it streams from the primary, or name another standby", target, ns.GetWalReceiverStatus())
	case ns.GetReplayPaused():
		return fmt.Errorf("%s has WAL replay paused, so it cannot catch up; resume it with SELECT pg_wal_replay_resume() there, or name another standby", target)
	}
	return nil
}

// switchover: decided → fenced for a planned switchover (or aborted, with the old primary
// writable again). The order makes every acknowledged write survive and lets the old primary
// follow without a rewind:
//
//  1. the old primary's keeper fences it (read-only, client sessions terminated): from here no
//     write is acknowledged; it reports its WAL end;
//  2. wait until the target has replayed that WAL end (bounded by the switchover timeout; a
//     target that cannot catch up aborts here, cheaply: the old primary is only unfenced);
//  3. DEMOTE: the keeper shuts the old primary down cleanly (its walsenders send the shutdown
//     checkpoint to the connected standbys before it exits), measures the exact end of its WAL
//     (the final LSN), and starts it as a standby of the target;
//  4. wait until the target has replayed the final LSN (the rest of the timeout, at least a
//     fifth of it): the target then holds the old primary's whole history, so the new timeline
//     forks exactly at the old primary's last record;
//  5. commit fenced with final_lsn, fork_lsn (the target's replay position) and
//     data_loss_bytes = final − replayed (0), exact.
//
// Promotion, repointing (the old primary included) and publishing follow as for a failover.
func (s *Saga) switchover(ctx context.Context, c *regentv1.Cluster, ev *regentv1.FailoverEvent) error {
	from, to := node(c, ev.GetFromNode()), node(c, ev.GetToNode())
	if from == nil || to == nil {
		return s.abortSwitchover(ctx, c, ev, fmt.Sprintf("%s or %s is no longer in the cluster spec", ev.GetFromNode(), ev.GetToNode()))
	}
	timeout := SwitchoverTimeout(c, ev)
	if err := s.act(ctx); err != nil {
		return err
	}
	start := time.Now()
	walEnd, fenceNote, err := s.World.FenceForSwitchover(ctx, c, ev)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		return s.abortSwitchover(ctx, c, ev, fmt.Sprintf("fencing the primary %s failed: %v", from.GetName(), err))
	}
	fenced := time.Now()
	deadline := fenced.Add(timeout)
	if _, err := s.waitReplayed(ctx, c, to, walEnd, deadline); err != nil {
		if errors.Is(err, ErrNotLeading) || ctx.Err() != nil {
			return err
		}
		return s.abortSwitchover(ctx, c, ev, fmt.Sprintf("%s did not replay the fenced primary's WAL end %s within the switchover timeout %v: %v",
			to.GetName(), pglsn.Format(walEnd), timeout, err))
	}
	caughtUp := time.Now()
	var final uint64
	var demoteNote string
	err = s.retry(ctx, s.Opts.DemoteDeadline, func(ctx context.Context) error {
		var err error
		final, demoteNote, err = s.World.Demote(ctx, c, ev, from, to)
		return err
	})
	if errors.Is(err, ErrNotLeading) || ctx.Err() != nil {
		return err
	}
	if err != nil {
		return s.abortSwitchover(ctx, c, ev, fmt.Sprintf("demoting %s failed for %v: %v", from.GetName(), s.Opts.DemoteDeadline, err))
	}
	demoted := time.Now()
	replayed, err := s.waitReplayed(ctx, c, to, final, later(deadline, demoted.Add(timeout/5)))
	if err != nil {
		if errors.Is(err, ErrNotLeading) || ctx.Err() != nil {
			return err
		}
		return s.abortSwitchover(ctx, c, ev, fmt.Sprintf("%s did not replay the demoted primary's final LSN %s within the switchover timeout %v: %v",
			to.GetName(), pglsn.Format(final), timeout, err))
	}
	if err := s.act(ctx); err != nil {
		return err
	}
	loss := int64(0)
	if final > replayed {
		loss = int64(final - replayed) // not reached: waitReplayed returned once replayed ≥ final
	}
	note := fmt.Sprintf("switchover: %s (%v); %s replayed its WAL end %s after %v; %s (%v); %s replayed the final LSN %s (at %s) after %v: data loss %d bytes",
		fenceNote, fenced.Sub(start).Round(time.Millisecond), to.GetName(), pglsn.Format(walEnd), caughtUp.Sub(fenced).Round(time.Millisecond),
		demoteNote, demoted.Sub(caughtUp).Round(time.Millisecond), to.GetName(), pglsn.Format(final), pglsn.Format(replayed),
		time.Since(demoted).Round(time.Millisecond), loss)
	return s.advance(ctx, &regentv1.AdvanceFailoverCommand{EventId: ev.GetId(), Step: regentv1.FailoverStep_FAILOVER_STEP_FENCED,
		FenceMethod: "switchover", DataLossBytes: &loss, DataLossExact: true, FinalLsn: final, ForkLsn: replayed, Note: note})
}

// waitReplayed polls node's replay position until it reaches lsn or deadline passes (it reads
// at least once), and returns the last position read.
func (s *Saga) waitReplayed(ctx context.Context, c *regentv1.Cluster, n *regentv1.NodeSpec, lsn uint64, deadline time.Time) (uint64, error) {
	var last uint64
	var lastErr error
	for {
		rctx, cancel := context.WithDeadline(ctx, later(deadline, time.Now().Add(time.Second)))
		r, err := s.World.ReplayedLSN(rctx, c, n)
		cancel()
		if ctx.Err() != nil {
			return last, ctx.Err()
		}
		if err == nil {
			last = r
			if r >= lsn {
				return r, nil
			}
		}
		lastErr = err
		if !time.Now().Before(deadline) {
			if lastErr != nil {
				return last, fmt.Errorf("replayed %s; last read failed: %w", pglsn.Format(last), lastErr)
			}
			return last, fmt.Errorf("replayed only %s (%d bytes short)", pglsn.Format(last), lsn-last)
		}
		if err := s.wait(ctx, s.Opts.ReplayPoll); err != nil {
			return last, err
		}
	}
}

// abortSwitchover makes the old primary writable again and aborts the event with reason and
// what the restoration did (or why it failed, alerted: the old primary then stays read-only).
func (s *Saga) abortSwitchover(ctx context.Context, c *regentv1.Cluster, ev *regentv1.FailoverEvent, reason string) error {
	var note string
	err := s.retry(ctx, s.Opts.DemoteDeadline, func(ctx context.Context) error {
		var err error
		note, err = s.World.RestorePrimary(ctx, c, ev)
		return err
	})
	if errors.Is(err, ErrNotLeading) || ctx.Err() != nil {
		return err
	}
	if err != nil {
		reason += fmt.Sprintf("; the old primary %s could NOT be made writable again (%v): it stays read-only — check its keeper, then unfence it or run regent switchover again", ev.GetFromNode(), err)
		s.World.Alert("switchover_restore_failed", "critical", ev.GetCluster(),
			fmt.Sprintf("switchover %d of %s aborted and its old primary %s could not be made writable again: %v", ev.GetId(), ev.GetCluster(), ev.GetFromNode(), err),
			map[string]any{"event_id": ev.GetId()})
	} else {
		reason += "; " + note
	}
	return s.abort(ctx, ev, reason)
}

// later is the later of two times.
func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
