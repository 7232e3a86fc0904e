package keeper

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/regentdb/regent/fencing"
	"github.com/regentdb/regent/internal/pglsn"
	"github.com/regentdb/regent/pgops"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// service is the regent.v1.Keeper gRPC service.
type service struct {
	regentv1.UnimplementedKeeperServer
	k *Keeper
}

// maxActionTime bounds one instruction's action when the caller set no shorter deadline.
const maxActionTime = 2 * time.Minute

// Instruct obeys the leader's instruction if its token is at least the highest obeyed: the
// token is recorded durably first (so no older token can act afterwards, even if the action
// fails or the keeper restarts), then the action runs. An equal token repeats the action,
// which is idempotent. An action that could not complete answers done = false with the reason;
// only a refused instruction is an error.
func (s *service) Instruct(ctx context.Context, req *regentv1.InstructRequest) (*regentv1.InstructResponse, error) {
	k := s.k
	if req.GetToken() == nil {
		return nil, status.Error(codes.InvalidArgument, "token is required: every instruction carries the leader's fencing token (term, event)")
	}
	if req.GetCluster() != k.cfg.Cluster || req.GetNode() != k.cfg.NodeName {
		return nil, status.Errorf(codes.InvalidArgument, "this keeper runs beside %s/%s, not %s/%s: send the instruction to that node's keeper_addr",
			k.cfg.Cluster, k.cfg.NodeName, req.GetCluster(), req.GetNode())
	}
	act := req.GetAction()
	switch act {
	case regentv1.KeeperAction_KEEPER_ACTION_FENCE, regentv1.KeeperAction_KEEPER_ACTION_UNFENCE,
		regentv1.KeeperAction_KEEPER_ACTION_STOP, regentv1.KeeperAction_KEEPER_ACTION_PROMOTE,
		regentv1.KeeperAction_KEEPER_ACTION_RESTART, regentv1.KeeperAction_KEEPER_ACTION_REJOIN:
	case regentv1.KeeperAction_KEEPER_ACTION_DEMOTE:
		return s.instructDemote(ctx, req)
	default:
		return nil, status.Errorf(codes.InvalidArgument, "action %v is not one this keeper knows: use FENCE, UNFENCE, STOP, PROMOTE, RESTART or REJOIN", act)
	}
	if act == regentv1.KeeperAction_KEEPER_ACTION_REJOIN {
		if req.GetUpstreamHost() == "" || req.GetUpstreamPort() == 0 || req.GetUpstreamPort() > 65535 {
			return nil, status.Errorf(codes.InvalidArgument, "REJOIN needs upstream_host and upstream_port (1-65535): the new primary to stream from (got %q:%d)", req.GetUpstreamHost(), req.GetUpstreamPort())
		}
	}
	tok := TokenFromProto(req.GetToken())

	k.actMu.Lock()
	defer k.actMu.Unlock()
	if err := k.admit(tok); err != nil {
		return nil, err
	}
	parent, limit := ctx, maxActionTime
	if act == regentv1.KeeperAction_KEEPER_ACTION_REJOIN {
		// A rejoin runs to its end even when the leader stops waiting (its call has a deadline
		// of minutes; a re-clone may take hours): the leader sees `rejoining` in KeeperStatus
		// meanwhile, and a repeated REJOIN with this token answers the recorded result.
		parent, limit = context.WithoutCancel(ctx), k.cfg.rejoinTimeout()
	}
	actx, cancel := context.WithTimeout(parent, limit)
	defer cancel()
	k.log.Info("instruction", "action", act.String(), "token", tok.String())
	var (
		done   bool
		detail string
		err    error
	)
	var rep *regentv1.RejoinReport
	if act == regentv1.KeeperAction_KEEPER_ACTION_REJOIN {
		done, detail, err = k.doRejoin(actx, tok, req.GetUpstreamHost(), uint16(req.GetUpstreamPort()))
		rep = k.rejoinReport(tok, done && err == nil, detail, err)
	} else {
		done, detail, err = k.do(actx, act)
	}
	if err != nil {
		k.log.Warn("instruction did not complete", "action", act.String(), "token", tok.String(), "err", err)
		detail = err.Error()
		done = false
	}
	k.poke()
	resp := &regentv1.InstructResponse{Done: done, Detail: detail, Highest: k.state.Get().Highest.Proto(), Rejoin: rep}
	if act == regentv1.KeeperAction_KEEPER_ACTION_STOP && done {
		// The stop is marked durably and no postmaster runs: a fence the leader need not
		// wait out. The control file's final position is the end of the stopped WAL.
		resp.Stopped = true
		if cd, err := k.pg.ControlData(actx); err == nil {
			_, resp.FinalLsn = controlFacts(cd)
		}
	}
	return resp, nil
}

// do carries out one action; actMu is held.
func (k *Keeper) do(ctx context.Context, act regentv1.KeeperAction) (bool, string, error) {
	switch act {
	case regentv1.KeeperAction_KEEPER_ACTION_FENCE:
		return k.doFence(ctx)
	case regentv1.KeeperAction_KEEPER_ACTION_UNFENCE:
		return k.doUnfence(ctx)
	case regentv1.KeeperAction_KEEPER_ACTION_STOP:
		return k.doStop(ctx)
	case regentv1.KeeperAction_KEEPER_ACTION_PROMOTE:
		return k.doPromote(ctx)
	case regentv1.KeeperAction_KEEPER_ACTION_RESTART:
		return k.doRestart(ctx)
	}
	return false, "", fmt.Errorf("action %v is not implemented", act)
}

// doFence marks the fence (durably, so a restarted keeper keeps it) and fences a running
// server; a stopped one will start read-only.
func (k *Keeper) doFence(ctx context.Context) (bool, string, error) {
	k.mu.Lock()
	epoch := k.lease.epoch
	k.mu.Unlock()
	if err := k.state.Update(func(s *State) { s.Fence, s.FenceEpoch = FenceInstruction, epoch }); err != nil {
		return false, "", err
	}
	if !k.checkRunning(ctx) {
		return true, "PostgreSQL is not running; the keeper will start it read-only", nil
	}
	if err := k.fence(ctx, FenceInstruction, 30*time.Second); err != nil {
		return false, "", err
	}
	o := k.observe(ctx, 5*time.Second)
	switch {
	case o.OK && o.InRecovery:
		return true, "in recovery (a standby): not writable; the fence mark stays for when it is promoted", nil
	case o.OK && o.ReadOnly:
		return true, "read-only for new transactions, client sessions terminated, write refused (25006)", nil
	case !k.checkRunning(ctx):
		return true, "stopped (pg_ctl stop -m immediate) after the SQL fence failed", nil
	}
	return false, "", errors.New("the fence ran but the server does not look fenced; retry")
}

// doUnfence lifts a FENCE instruction. The server takes writes again only under the lease:
// a primary whose keeper does not hold it stays fenced until it does.
func (k *Keeper) doUnfence(ctx context.Context) (bool, string, error) {
	v := k.viewNow(time.Now())
	o := k.observe(ctx, 5*time.Second)
	if o.OK && o.InRecovery {
		if err := fencing.UnfenceSQL(ctx, k.target()); err != nil {
			return false, "", err
		}
		if err := k.state.Update(func(s *State) { s.Fence, s.FenceEpoch = FenceNone, 0 }); err != nil {
			return false, "", err
		}
		return true, "unfenced (a standby)", nil
	}
	if !(v.designated && v.holds) {
		if err := k.state.Update(func(s *State) { s.Fence, s.FenceEpoch = FenceLease, v.epoch }); err != nil {
			return false, "", err
		}
		return false, fmt.Sprintf("the instruction's fence is lifted, but this node does not hold the lease (epoch %d) and stays fenced until a majority of witnesses grants it", v.epoch), nil
	}
	if !k.checkRunning(ctx) {
		if err := k.state.Update(func(s *State) { s.Fence, s.FenceEpoch = FenceLease, v.epoch }); err != nil {
			return false, "", err
		}
		return false, "PostgreSQL is not running; it starts writable once this node holds the lease", nil
	}
	if err := k.unfence(ctx); err != nil {
		return false, "", err
	}
	return true, "unfenced: this node holds the lease", nil
}

// doStop stops the server (fast, then immediate) and keeps it stopped.
func (k *Keeper) doStop(ctx context.Context) (bool, string, error) {
	if err := k.state.Update(func(s *State) { s.Stopped = true }); err != nil {
		return false, "", err
	}
	if err := k.pg.Stop(ctx, "fast", 30*time.Second); err != nil {
		k.log.Warn("fast shutdown failed; stopping immediately", "err", err)
		if err := k.pg.Stop(ctx, "immediate", 30*time.Second); err != nil {
			return false, "", err
		}
	}
	if k.checkRunning(ctx) {
		return false, "", errors.New("pg_ctl stop returned but a postmaster still runs; retry")
	}
	return true, "stopped; the keeper will not start it until a RESTART instruction", nil
}

// doPromote promotes the server with pgops.Promote (idempotent). The promotion also lifts
// the keeper's fence marks: the leader has chosen this node.
func (k *Keeper) doPromote(ctx context.Context) (bool, string, error) {
	if k.state.Get().Stopped || !k.checkRunning(ctx) {
		return false, "PostgreSQL is not running; send RESTART first", nil
	}
	// Observed in recovery now, so the lease obligation counts from here (keeper.go).
	k.observe(ctx, 5*time.Second)
	if k.pg.StartedReadOnly() {
		// The read-only option would defeat pgops.Promote's write check: restart without it
		// (ALTER SYSTEM keeps the server read-only until Promote resets it).
		if err := fencing.FenceSQL(ctx, k.target()); err != nil {
			return false, "", err
		}
		if err := k.pg.Stop(ctx, "fast", 60*time.Second); err != nil {
			return false, "", err
		}
		if err := k.pg.Start(ctx, false); err != nil {
			return false, "", err
		}
		k.checkRunning(ctx)
	}
	if err := k.state.Update(func(s *State) { s.Fence, s.FenceEpoch, s.Stopped, s.RejoinPartial = FenceNone, 0, false, "" }); err != nil {
		return false, "", err
	}
	res, err := pgops.Promote(ctx, k.target())
	if err != nil {
		return false, "", err
	}
	if res.AlreadyPrimary {
		return true, fmt.Sprintf("already a primary (timeline %d, LSN %s)", res.Timeline, pglsn.Format(res.LSN)), nil
	}
	return true, fmt.Sprintf("promoted: timeline %d, LSN %s", res.Timeline, pglsn.Format(res.LSN)), nil
}

// doRestart lifts a STOP and restarts the server under the startup rules.
func (k *Keeper) doRestart(ctx context.Context) (bool, string, error) {
	if err := k.state.Update(func(s *State) { s.Stopped = false }); err != nil {
		return false, "", err
	}
	if k.checkRunning(ctx) {
		if err := k.pg.Stop(ctx, "fast", 60*time.Second); err != nil {
			return false, "", err
		}
	}
	k.mu.Lock()
	k.nextStart = time.Time{}
	k.mu.Unlock()
	k.startServer(ctx, "RESTART instruction")
	if !k.checkRunning(ctx) {
		return false, "", errors.New("PostgreSQL did not start; see the keeper's log and postgres_log")
	}
	if k.pg.StartedReadOnly() {
		return true, "restarted read-only: this node does not hold the lease", nil
	}
	return true, "restarted", nil
}

// KeeperStatus reports local facts the witnesses cannot see.
func (s *service) KeeperStatus(ctx context.Context, _ *regentv1.KeeperStatusRequest) (*regentv1.KeeperStatusResponse, error) {
	st := s.k.Status(ctx, true)
	return &regentv1.KeeperStatusResponse{
		Cluster: st.Cluster, Node: st.Node,
		PostmasterRunning: st.PostmasterRunning,
		InRecovery:        st.InRecovery,
		CrashRecovery:     st.CrashRecovery,
		FinalLsn:          st.FinalLSN,
		HoldsLease:        st.HoldsLease,
		LeaseEpoch:        st.LeaseEpoch,
		Fenced:            st.Fenced,
		Highest:           st.Highest.Proto(),
		Rejoining:         st.Rejoining,
		LastRejoin:        s.k.lastRejoinReport(),
		Restarting:        st.Restarting,
		RestartElapsedMs:  st.RestartElapsed.Milliseconds(),
	}, nil
}

// admit refuses a token older than the highest obeyed (FailedPrecondition) and otherwise
// records it durably before the action runs, so that no older token can act afterwards, even
// if the action fails or the keeper restarts. actMu is held.
func (k *Keeper) admit(tok Token) error {
	if err := checkToken(tok, k.state.Get().Highest); err != nil {
		return status.Error(codes.FailedPrecondition, err.Error())
	}
	if err := k.state.Update(func(st *State) {
		if tok.Compare(st.Highest) > 0 {
			st.Highest = tok
		}
	}); err != nil {
		return status.Errorf(codes.Unavailable, "recording the fencing token before acting: %v", err)
	}
	return nil
}
