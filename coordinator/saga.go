package coordinator

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/regentdb/regent/fencing"
	"github.com/regentdb/regent/fsm"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
	"github.com/regentdb/regent/spec"
)

// Leader is what a saga needs from Raft: committing its steps as the current leader.
type Leader interface {
	// Propose commits a command and returns the FSM's result; it fails when this node is not
	// (or stops being) the leader.
	Propose(ctx context.Context, t regentv1.CommandType, payload proto.Message) (*fsm.Result, error)
	// Term is the current Raft term, the saga's fencing token.
	Term() uint64
	// VerifyLeader confirms with a quorum that this node still leads.
	VerifyLeader(ctx context.Context) error
	// State is the committed state.
	State() *regentv1.State
}

// FenceOutcome says which fence method held ("" when none did) and what was tried.
type FenceOutcome struct {
	Method string
	Notes  []string
}

// World is what a saga does outside regent. Every method must be idempotent: a saga resumed
// by a new leader repeats the step the old one may have half done.
type World interface {
	// Fence tries the policy's fence methods on the old primary.
	Fence(ctx context.Context, c *regentv1.Cluster, ev *regentv1.FailoverEvent) FenceOutcome
	// Promote makes node a writable primary (a no-op when it already is) and returns the
	// LSN and timeline it writes at.
	Promote(ctx context.Context, c *regentv1.Cluster, node *regentv1.NodeSpec) (lsn uint64, timeline uint32, err error)
	// Repoint makes standby stream from primary and confirms it does.
	Repoint(ctx context.Context, c *regentv1.Cluster, standby, primary *regentv1.NodeSpec) error
	// RevokeLease has a majority of witnesses durably revoke the cluster's current lease
	// epoch (the old primary's) and returns, by the local clock, the time the wait counts
	// from: fencing.GrantBound of the majority's acknowledgements (no later than the
	// acknowledgement completing the majority, which is always a correct answer).
	RevokeLease(ctx context.Context, c *regentv1.Cluster, ev *regentv1.FailoverEvent) (from time.Time, err error)
	// Publish points the cluster's DNS record at primary, guarded by prevToken.
	Publish(ctx context.Context, c *regentv1.Cluster, primary *regentv1.NodeSpec, prevToken, newToken string) error
	// RunHook runs an operator command (pre_promote, post_failover) with the event's details
	// in its environment; err is non-nil for a non-zero exit, a timeout or a failure to start.
	RunHook(ctx context.Context, name, command string, env map[string]string, timeout time.Duration) (output string, err error)
	// Alert raises an alert.
	Alert(kind, severity, cluster, message string, fields map[string]any)

	// The switchover's steps (switchover.go): every one is idempotent like those above.

	// FenceForSwitchover has the old primary's keeper make it refuse writes (read-only, client
	// sessions terminated) and returns the end of its WAL once it can no longer write. An old
	// primary already demoted (a resumed saga) answers its WAL position as a standby.
	FenceForSwitchover(ctx context.Context, c *regentv1.Cluster, ev *regentv1.FailoverEvent) (walEnd uint64, note string, err error)
	// ReplayedLSN is how far node has replayed WAL (pg_last_wal_replay_lsn()), read from it.
	ReplayedLSN(ctx context.Context, c *regentv1.Cluster, node *regentv1.NodeSpec) (uint64, error)
	// Demote has the old primary's keeper shut it down cleanly, measure the end of its WAL
	// (finalLSN: where its history ends, exactly) and start it as a standby of upstream.
	Demote(ctx context.Context, c *regentv1.Cluster, ev *regentv1.FailoverEvent, old, upstream *regentv1.NodeSpec) (finalLSN uint64, note string, err error)
	// RestorePrimary undoes a switchover that stops before the promotion: the old primary
	// takes writes again (unfenced, or promoted back if it was already demoted).
	RestorePrimary(ctx context.Context, c *regentv1.Cluster, ev *regentv1.FailoverEvent) (note string, err error)
}

// SagaOptions tune how long each step may keep retrying before the saga gives up on it.
type SagaOptions struct {
	// PromoteDeadline bounds retries of the promotion; past it the saga aborts (nothing was
	// promoted). Default 60s.
	PromoteDeadline time.Duration
	// RepointDeadline bounds retries of repointing each standby; a standby still not
	// following by then is left for later and noted. Default 30s.
	RepointDeadline time.Duration
	// RevokeDeadline bounds retries of revoking the old primary's lease at a majority of
	// witnesses; past it the saga aborts. Default 30s.
	RevokeDeadline time.Duration
	// PublishDeadline bounds retries of the DNS update; past it the saga completes with the
	// failure recorded and alerted. Default 30s.
	PublishDeadline time.Duration
	// Backoff is the first wait between retries; it doubles up to 5s. Default 200ms.
	Backoff time.Duration
	// DemoteDeadline bounds retries of a switchover's demotion of the old primary (a clean
	// shutdown, which may have a checkpoint to write); past it the switchover aborts and the
	// old primary is restored. Default 60s.
	DemoteDeadline time.Duration
	// ReplayPoll is how often a switchover reads the target's replay position while waiting
	// for it to catch up. Default 20ms.
	ReplayPoll time.Duration
}

func (o SagaOptions) withDefaults() SagaOptions {
	if o.PromoteDeadline == 0 {
		o.PromoteDeadline = 60 * time.Second
	}
	if o.RepointDeadline == 0 {
		o.RepointDeadline = 30 * time.Second
	}
	if o.RevokeDeadline == 0 {
		o.RevokeDeadline = 30 * time.Second
	}
	if o.PublishDeadline == 0 {
		o.PublishDeadline = 30 * time.Second
	}
	if o.Backoff == 0 {
		o.Backoff = 200 * time.Millisecond
	}
	if o.DemoteDeadline == 0 {
		o.DemoteDeadline = 60 * time.Second
	}
	if o.ReplayPoll == 0 {
		o.ReplayPoll = 20 * time.Millisecond
	}
	return o
}

// ErrNotLeading means the saga stopped because this node no longer leads; the next leader
// resumes it from its last committed step.
var ErrNotLeading = errors.New("saga stopped: this witness no longer leads; the next leader resumes it")

// Saga drives one failover event through its steps:
//
//	decided → fenced → promoted → repointed → published → completed   (or aborted)
//
// Each step's outcome is committed (with the leader's term) before the next external action,
// and the leader confirms it still leads before acting, so a stale leader neither acts nor
// records; a new leader calls Run again and continues from the last committed step.
type Saga struct {
	Leader Leader
	World  World
	Opts   SagaOptions
	// Wait sleeps for d or until ctx ends (injectable for tests); default a timer.
	Wait func(ctx context.Context, d time.Duration) error
}

func (s *Saga) wait(ctx context.Context, d time.Duration) error {
	if s.Wait != nil {
		return s.Wait(ctx, d)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Run drives event id until it is completed or aborted, or until leadership or ctx is lost.
func (s *Saga) Run(ctx context.Context, id uint64) error {
	s.Opts = s.Opts.withDefaults()
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		st := s.Leader.State()
		ev, c := findEvent(st, id)
		if ev == nil {
			return fmt.Errorf("failover event %d does not exist", id)
		}
		if c == nil {
			return s.abort(ctx, ev, "cluster "+ev.GetCluster()+" was deleted")
		}
		var err error
		switch ev.GetStep() {
		case regentv1.FailoverStep_FAILOVER_STEP_COMPLETED, regentv1.FailoverStep_FAILOVER_STEP_ABORTED:
			return nil
		case regentv1.FailoverStep_FAILOVER_STEP_DECIDED:
			if ev.GetSwitchover() {
				err = s.switchover(ctx, c, ev)
			} else {
				err = s.fence(ctx, c, ev)
			}
		case regentv1.FailoverStep_FAILOVER_STEP_FENCED:
			err = s.promote(ctx, c, ev)
		case regentv1.FailoverStep_FAILOVER_STEP_PROMOTED:
			err = s.repoint(ctx, c, ev)
		case regentv1.FailoverStep_FAILOVER_STEP_REPOINTED:
			err = s.publish(ctx, c, ev)
		case regentv1.FailoverStep_FAILOVER_STEP_PUBLISHED:
			err = s.complete(ctx, c, ev)
		default:
			return fmt.Errorf("failover event %d has unknown step %v", id, ev.GetStep())
		}
		if err != nil {
			return err
		}
	}
}

func findEvent(st *regentv1.State, id uint64) (*regentv1.FailoverEvent, *regentv1.Cluster) {
	for _, ev := range st.GetFailoverEvents() {
		if ev.GetId() == id {
			for _, c := range st.GetClusters() {
				if c.GetName() == ev.GetCluster() {
					return ev, c
				}
			}
			return ev, nil
		}
	}
	return nil, nil
}

func node(c *regentv1.Cluster, name string) *regentv1.NodeSpec {
	for _, n := range c.GetNodes() {
		if n.GetName() == name {
			return n
		}
	}
	return nil
}

// act confirms leadership before an external action.
func (s *Saga) act(ctx context.Context) error {
	if err := s.Leader.VerifyLeader(ctx); err != nil {
		return fmt.Errorf("%w: %v", ErrNotLeading, err)
	}
	return nil
}

// advance commits the saga's next step with this leader's term.
func (s *Saga) advance(ctx context.Context, cmd *regentv1.AdvanceFailoverCommand) error {
	return s.advanceAt(ctx, s.Leader.Term(), cmd)
}

// advanceAt commits the saga's next step with the given term.
func (s *Saga) advanceAt(ctx context.Context, term uint64, cmd *regentv1.AdvanceFailoverCommand) error {
	cmd.Term = term
	res, err := s.Leader.Propose(ctx, regentv1.CommandType_COMMAND_TYPE_ADVANCE_FAILOVER, cmd)
	if err != nil {
		return fmt.Errorf("%w: commit step %v of event %d: %v", ErrNotLeading, cmd.GetStep(), cmd.GetEventId(), err)
	}
	if res.Err != nil {
		return fmt.Errorf("step %v of event %d refused: %w", cmd.GetStep(), cmd.GetEventId(), res.Err)
	}
	return nil
}

func (s *Saga) abort(ctx context.Context, ev *regentv1.FailoverEvent, reason string) error {
	kind, severity := "failover", "critical"
	if ev.GetSwitchover() {
		kind, severity = "switchover", "warning" // planned; the old primary is restored
	}
	s.World.Alert(kind+"_aborted", severity, ev.GetCluster(),
		fmt.Sprintf("%s %d of %s (%s → %s) aborted: %s", kind, ev.GetId(), ev.GetCluster(), ev.GetFromNode(), ev.GetToNode(), reason),
		map[string]any{"event_id": ev.GetId()})
	return s.advance(ctx, &regentv1.AdvanceFailoverCommand{EventId: ev.GetId(), Step: regentv1.FailoverStep_FAILOVER_STEP_ABORTED, AbortReason: reason})
}

// fence: decided → fenced (or aborted when nothing confirms and the policy refuses).
func (s *Saga) fence(ctx context.Context, c *regentv1.Cluster, ev *regentv1.FailoverEvent) error {
	if err := s.act(ctx); err != nil {
		return err
	}
	pol := spec.WithDefaults(c.GetPolicy())
	out := s.World.Fence(ctx, c, ev)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	note := joinNotes(out.Notes)
	if out.Method != "" {
		return s.advance(ctx, &regentv1.AdvanceFailoverCommand{EventId: ev.GetId(), Step: regentv1.FailoverStep_FAILOVER_STEP_FENCED,
			FenceMethod: out.Method, Note: note})
	}
	if pol.GetFenceFallback() == "refuse" {
		return s.abort(ctx, ev, "no fence method confirmed and the policy's fence_fallback is refuse ("+note+")")
	}
	// Nothing confirmed: revoke the old primary's lease epoch at a majority of witnesses, then
	// wait until its keeper has surely fenced itself (fencing/lease.go has the argument). A
	// primary without a keeper holds no lease; the wait then only bounds how long a paused
	// old primary could have gone on.
	var from time.Time
	err := s.retry(ctx, s.Opts.RevokeDeadline, func(ctx context.Context) error {
		var err error
		from, err = s.World.RevokeLease(ctx, c, ev)
		return err
	})
	if errors.Is(err, ErrNotLeading) || ctx.Err() != nil {
		return err
	}
	if err != nil {
		return s.abort(ctx, ev, fmt.Sprintf("no fence confirmed (%s) and the lease could not be revoked at a majority of witnesses: %v", note, err))
	}
	ttl := time.Duration(pol.GetLeaseTtlMs()) * time.Millisecond
	// From the revokers' last grants, not from the revocation (fencing.GrantBound).
	until := fencing.RevocationSafeAfter(from, ttl, fencing.DefaultDrift)
	waited := max(time.Until(until), 0)
	if err := s.wait(ctx, waited); err != nil {
		return err
	}
	if err := s.act(ctx); err != nil {
		return err
	}
	return s.advance(ctx, &regentv1.AdvanceFailoverCommand{EventId: ev.GetId(), Step: regentv1.FailoverStep_FAILOVER_STEP_FENCED,
		FenceMethod: "lease", Note: fmt.Sprintf("no fence confirmed (%s); lease epoch %d revoked at a majority, waited lease_ttl %v × (1 + %.2f drift)",
			note, c.GetLeaseEpoch(), ttl, fencing.DefaultDrift) + fmt.Sprintf(" from the revokers' last grants (%v after the revocation)", waited.Round(time.Millisecond))})
}

func joinNotes(notes []string) string {
	out := ""
	for i, n := range notes {
		if i > 0 {
			out += "; "
		}
		out += n
	}
	return out
}

// HookEnv describes a failover event to operator commands as REGENT_* environment variables.
func HookEnv(c *regentv1.Cluster, ev *regentv1.FailoverEvent) map[string]string {
	env := map[string]string{
		"REGENT_CLUSTER":        ev.GetCluster(),
		"REGENT_EVENT_ID":       strconv.FormatUint(ev.GetId(), 10),
		"REGENT_TERM":           strconv.FormatUint(ev.GetTerm(), 10),
		"REGENT_FROM_NODE":      ev.GetFromNode(),
		"REGENT_FROM_REGION":    ev.GetFromRegion(),
		"REGENT_TO_NODE":        ev.GetToNode(),
		"REGENT_TO_REGION":      ev.GetToRegion(),
		"REGENT_TRIGGER_REASON": ev.GetTriggerReason(),
		"REGENT_STEP":           fsm.StepName(ev.GetStep()),
	}
	if n := node(c, ev.GetFromNode()); n != nil {
		env["REGENT_FROM_HOST"], env["REGENT_FROM_PORT"] = n.GetHost(), strconv.Itoa(int(n.GetPort()))
	}
	if n := node(c, ev.GetToNode()); n != nil {
		env["REGENT_TO_HOST"], env["REGENT_TO_PORT"] = n.GetHost(), strconv.Itoa(int(n.GetPort()))
	}
	if ev.DataLossBytes != nil {
		env["REGENT_DATA_LOSS_BYTES"] = strconv.FormatInt(ev.GetDataLossBytes(), 10)
	}
	if ev.GetSwitchover() {
		env["REGENT_SWITCHOVER"] = "true"
	}
	return env
}

// retry calls fn with backoff until it succeeds, leadership is lost, ctx ends or the deadline
// passes; it returns fn's last error.
func (s *Saga) retry(ctx context.Context, deadline time.Duration, fn func(context.Context) error) error {
	end := time.Now().Add(deadline)
	backoff := s.Opts.Backoff
	for {
		if err := s.act(ctx); err != nil {
			return err
		}
		actx, cancel := context.WithDeadline(ctx, end)
		err := fn(actx)
		cancel()
		if err == nil || ctx.Err() != nil {
			return err
		}
		if time.Now().Add(backoff).After(end) {
			return err
		}
		if werr := s.wait(ctx, backoff); werr != nil {
			return werr
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// promote: fenced → promoted (or aborted on a pre_promote veto or when promotion keeps failing).
func (s *Saga) promote(ctx context.Context, c *regentv1.Cluster, ev *regentv1.FailoverEvent) error {
	pol := spec.WithDefaults(c.GetPolicy())
	to := node(c, ev.GetToNode())
	if to == nil {
		return s.abort(ctx, ev, "candidate "+ev.GetToNode()+" is no longer in the cluster spec")
	}
	if cmd := pol.GetPrePromoteCommand(); cmd != "" {
		if err := s.act(ctx); err != nil {
			return err
		}
		out, err := s.World.RunHook(ctx, "pre_promote", cmd, HookEnv(c, ev), time.Duration(pol.GetCommandTimeoutMs())*time.Millisecond)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			return s.abort(ctx, ev, fmt.Sprintf("pre_promote vetoed the promotion: %v; output: %s", err, out))
		}
	}
	var lsn uint64
	var tli uint32
	err := s.retry(ctx, s.Opts.PromoteDeadline, func(ctx context.Context) error {
		var err error
		lsn, tli, err = s.World.Promote(ctx, c, to)
		return err
	})
	if errors.Is(err, ErrNotLeading) || ctx.Err() != nil {
		return err
	}
	if err != nil {
		return s.abort(ctx, ev, fmt.Sprintf("promoting %s failed for %v: %v", to.GetName(), s.Opts.PromoteDeadline, err))
	}
	return s.advance(ctx, &regentv1.AdvanceFailoverCommand{EventId: ev.GetId(), Step: regentv1.FailoverStep_FAILOVER_STEP_PROMOTED,
		PromotedLsn: lsn, PromotedTimeline: tli})
}

// repoint: promoted → repointed. Every other node that a witness currently reaches is pointed
// at the new primary; one that cannot be is noted and left for later (the old primary is
// handled by the rejoin flow, not here — except after a switchover, where it already follows
// the candidate as a standby and is confirmed streaming from it like the others).
func (s *Saga) repoint(ctx context.Context, c *regentv1.Cluster, ev *regentv1.FailoverEvent) error {
	to := node(c, ev.GetToNode())
	var notes []string
	for _, n := range c.GetNodes() {
		if n.GetName() == ev.GetToNode() || (n.GetName() == ev.GetFromNode() && !ev.GetSwitchover()) {
			continue
		}
		// A switchover's old primary has just restarted as a standby: the witnesses' votes may
		// still say it is down, and it is confirmed (with retries) all the same.
		if !reachable(c, n.GetName()) && n.GetName() != ev.GetFromNode() {
			notes = append(notes, n.GetName()+" unreachable: not repointed")
			continue
		}
		err := s.retry(ctx, s.Opts.RepointDeadline, func(ctx context.Context) error {
			return s.World.Repoint(ctx, c, n, to)
		})
		if errors.Is(err, ErrNotLeading) || ctx.Err() != nil {
			return err
		}
		if err != nil {
			notes = append(notes, fmt.Sprintf("%s not repointed: %v", n.GetName(), err))
			s.World.Alert("repoint_failed", "warning", c.GetName(), fmt.Sprintf("standby %s of %s could not be pointed at the new primary %s: %v",
				n.GetName(), c.GetName(), to.GetName(), err), map[string]any{"event_id": ev.GetId()})
		}
	}
	return s.advance(ctx, &regentv1.AdvanceFailoverCommand{EventId: ev.GetId(), Step: regentv1.FailoverStep_FAILOVER_STEP_REPOINTED,
		Note: joinNotes(notes)})
}

// reachable reports whether a majority of the committed votes say the node is reachable.
func reachable(c *regentv1.Cluster, name string) bool {
	for _, ns := range c.GetNodeStatus() {
		if ns.GetName() != name {
			continue
		}
		up := 0
		for _, v := range ns.GetVotes() {
			if v.GetReachable() {
				up++
			}
		}
		return up > 0 && 2*up > len(ns.GetVotes())
	}
	return false
}

// publish: repointed → published. A cluster without DNS settings publishes nothing; a DNS
// update that keeps failing completes the step with the failure recorded and alerted. The token
// carries the term this leader commits the step with, read once, so what DNS holds and what the
// log records as the cluster's dns_token agree.
func (s *Saga) publish(ctx context.Context, c *regentv1.Cluster, ev *regentv1.FailoverEvent) error {
	if c.GetDns() == nil || c.GetDns().GetRecord() == "" {
		return s.advance(ctx, &regentv1.AdvanceFailoverCommand{EventId: ev.GetId(), Step: regentv1.FailoverStep_FAILOVER_STEP_PUBLISHED,
			Note: "no dns settings: nothing to publish"})
	}
	to := node(c, ev.GetToNode())
	term := s.Leader.Term()
	token := fsm.DNSToken(term, ev.GetId())
	err := s.retry(ctx, s.Opts.PublishDeadline, func(ctx context.Context) error {
		return s.World.Publish(ctx, c, to, c.GetDnsToken(), token)
	})
	if errors.Is(err, ErrNotLeading) || ctx.Err() != nil {
		return err
	}
	cmd := &regentv1.AdvanceFailoverCommand{EventId: ev.GetId(), Step: regentv1.FailoverStep_FAILOVER_STEP_PUBLISHED, Published: err == nil}
	if err != nil {
		cmd.PublishError = err.Error()
		s.World.Alert("publish_failed", "critical", c.GetName(), fmt.Sprintf("DNS record %s of %s could not be moved to %s: %v",
			c.GetDns().GetRecord(), c.GetName(), to.GetName(), err), map[string]any{"event_id": ev.GetId()})
	}
	return s.advanceAt(ctx, term, cmd)
}

// complete: published → completed, then the post_failover command and an alert.
func (s *Saga) complete(ctx context.Context, c *regentv1.Cluster, ev *regentv1.FailoverEvent) error {
	if err := s.advance(ctx, &regentv1.AdvanceFailoverCommand{EventId: ev.GetId(), Step: regentv1.FailoverStep_FAILOVER_STEP_COMPLETED}); err != nil {
		return err
	}
	st := s.Leader.State()
	done, _ := findEvent(st, ev.GetId())
	if done == nil {
		done = ev
	}
	loss := "unknown"
	if done.DataLossBytes != nil {
		how := "estimated"
		if done.GetDataLossExact() {
			how = "measured"
		}
		loss = strconv.FormatInt(done.GetDataLossBytes(), 10) + " bytes (" + how + ")"
	}
	kind := "failover"
	if done.GetSwitchover() {
		kind = "switchover"
	}
	severity := "critical"
	if done.GetSwitchover() {
		severity = "warning" // planned
	}
	s.World.Alert(kind+"_completed", severity, c.GetName(),
		fmt.Sprintf("%s %d of %s completed: %s (%s) → %s (%s); data loss %s", kind, done.GetId(), c.GetName(),
			done.GetFromNode(), done.GetFromRegion(), done.GetToNode(), done.GetToRegion(), loss),
		map[string]any{"event_id": done.GetId(), "fence_method": done.GetFenceMethod(), "published": done.GetPublished()})
	pol := spec.WithDefaults(c.GetPolicy())
	if cmd := pol.GetPostFailoverCommand(); cmd != "" {
		if out, err := s.World.RunHook(ctx, "post_failover", cmd, HookEnv(c, done), time.Duration(pol.GetCommandTimeoutMs())*time.Millisecond); err != nil {
			s.World.Alert("post_failover_failed", "warning", c.GetName(), fmt.Sprintf("post_failover command failed: %v; output: %s", err, out), nil)
		}
	}
	return nil
}
