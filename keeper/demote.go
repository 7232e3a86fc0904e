package keeper

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/regentdb/regent/internal/atomicfile"
	"github.com/regentdb/regent/internal/pglsn"
	"github.com/regentdb/regent/pgconnect"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
	"github.com/regentdb/regent/rejoin"
)

// DemoteResult is what a DEMOTE did, returned in InstructResponse.detail (as JSON) and kept in
// state_dir/keeper-demote.json so that a repeated DEMOTE of the same event answers it again.
type DemoteResult struct {
	// Token is the instruction's token; a DEMOTE of the same event (any term: a new leader
	// resuming the switchover) finding the server already a standby of Upstream answers this.
	Token Token `json:"token"`
	// FinalLSN is the exact end of the old primary's WAL after its clean shutdown (the end of
	// the shutdown checkpoint record), read with pg_waldump; Timeline the timeline it ends on.
	FinalLSN uint64 `json:"final_lsn"`
	Timeline uint32 `json:"timeline"`
	// Upstream is the host:port the server now streams from; Slot its replication slot there
	// ("" when the upstream would not create one).
	Upstream string `json:"upstream"`
	Slot     string `json:"slot,omitempty"`
	// Shutdown is how the server was stopped: "fast" (clean), "immediate" (the fast shutdown
	// failed), or "" (it was already stopped).
	Shutdown string `json:"shutdown,omitempty"`
	// DroppedSlots are the replication slots of its former standbys, removed while it was
	// stopped (on a standby they would hold WAL for ever).
	DroppedSlots []string `json:"dropped_slots,omitempty"`
	// How long the steps took, in milliseconds: the shutdown, reading the final LSN, the slot
	// and standby configuration, and the start as a standby.
	StopMs      int64 `json:"stop_ms"`
	MeasureMs   int64 `json:"measure_ms"`
	ConfigureMs int64 `json:"configure_ms"`
	StartMs     int64 `json:"start_ms"`
	// Repeated: this answer is the record of an earlier DEMOTE of the same event (the server
	// was already its standby), not a new demotion.
	Repeated bool `json:"repeated,omitempty"`
}

// demoteFile is where the last DEMOTE's result is kept in state_dir.
const demoteFile = "keeper-demote.json"

func (k *Keeper) readDemote() (*DemoteResult, error) {
	b, err := os.ReadFile(filepath.Join(k.cfg.StateDir, demoteFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the last demotion: %w", err)
	}
	var r DemoteResult
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s is corrupt (%v): remove it; a repeated DEMOTE then answers done = false instead of the recorded final LSN", filepath.Join(k.cfg.StateDir, demoteFile), err)
	}
	return &r, nil
}

func (k *Keeper) writeDemote(r DemoteResult) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(k.cfg.StateDir, demoteFile), append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("recording the demotion in state_dir: %w; check that state_dir is writable and not full", err)
	}
	return nil
}

// instructDemote obeys DEMOTE (see DESIGN.md, "Demote"): upstream_host and upstream_port are
// required (InvalidArgument before any token bookkeeping), the token is checked and recorded
// like every instruction's, and the answer carries the final LSN.
func (s *service) instructDemote(ctx context.Context, req *regentv1.InstructRequest) (*regentv1.InstructResponse, error) {
	k := s.k
	host, port := req.GetUpstreamHost(), req.GetUpstreamPort()
	if host == "" || port == 0 || port > 65535 {
		return nil, status.Errorf(codes.InvalidArgument, "DEMOTE needs upstream_host and upstream_port (1-65535): the switchover's target to follow (got %q:%d)", host, port)
	}
	if host == k.cfg.Host && uint16(port) == k.cfg.Port {
		return nil, status.Errorf(codes.InvalidArgument, "DEMOTE upstream %s:%d is this node's own server: name the switchover's target", host, port)
	}
	tok := TokenFromProto(req.GetToken())
	k.actMu.Lock()
	defer k.actMu.Unlock()
	if err := k.admit(tok); err != nil {
		return nil, err
	}
	// Not cancelled with the call: a leader that dies mid-way must not leave a half-stopped
	// server behind (a cancelled pg_ctl stop would fall back to nothing). The next leader's
	// DEMOTE waits for this one (actMu) and answers its record.
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), maxActionTime)
	defer cancel()
	k.log.Info("instruction", "action", regentv1.KeeperAction_KEEPER_ACTION_DEMOTE.String(), "token", tok.String(), "upstream", net.JoinHostPort(host, strconv.Itoa(int(port))))
	res, err := k.doDemote(actx, tok, host, uint16(port))
	k.poke()
	resp := &regentv1.InstructResponse{Highest: k.state.Get().Highest.Proto()}
	if err != nil {
		k.log.Warn("instruction did not complete", "action", "DEMOTE", "token", tok.String(), "err", err)
		resp.Detail = err.Error()
		return resp, nil
	}
	b, err := json.Marshal(res)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "encoding the demotion's result: %v", err)
	}
	resp.Done, resp.Detail, resp.FinalLsn = true, string(b), res.FinalLSN
	return resp, nil
}

// doDemote turns this primary into a standby of host:port without losing or forking its
// history; actMu is held and the token recorded:
//
//  1. a writable server is fenced first (nothing is acknowledged from here on);
//  2. pg_ctl stop -m fast: the shutdown checkpoint is written and the walsenders send it to
//     every connected standby before the server exits (immediate only if fast fails);
//  3. rejoin.FinalLSN: the exact end of its WAL — the saga waits until the target has replayed
//     it, so the target's new timeline forks exactly there and this server needs no rewind;
//  4. its former standbys' replication slots are removed (rejoin.RemoveSlots), a slot is made
//     on the upstream (best effort: a standby upstream may refuse), then
//     rejoin.ConfigureStandby (primary_conninfo, the slot, recovery_target_timeline latest,
//     standby.signal); the result is recorded before the server starts;
//  5. the fence marks are lifted (they are a primary's) and the server starts as a standby.
//
// A DEMOTE of the same event finding the server already a standby (of the same upstream)
// answers the recorded result; one interrupted between the stop and the start goes on from
// where it stopped (the measurement is repeated on the still-stopped directory).
func (k *Keeper) doDemote(ctx context.Context, tok Token, host string, port uint16) (DemoteResult, error) {
	start := time.Now()
	upstream := net.JoinHostPort(host, strconv.Itoa(int(port)))
	rec, err := k.readDemote()
	if err != nil {
		return DemoteResult{}, err
	}
	same := rec != nil && rec.Token.Event == tok.Event && rec.Upstream == upstream
	shutdown := ""
	if k.checkRunning(ctx) {
		o := k.observe(ctx, 5*time.Second)
		if (o.OK && o.InRecovery) || k.pg.StandbyConfigured() {
			if !same {
				return DemoteResult{}, fmt.Errorf("PostgreSQL is already a standby, not demoted by this event's DEMOTE to %s: it is not the primary to demote; check the cluster with regent status", upstream)
			}
			// A repeat (a resumed saga): a FENCE sent again in between marked it; a standby
			// carries no fence mark.
			if err := k.state.Update(func(s *State) { s.Fence, s.FenceEpoch, s.Stopped = FenceNone, 0, false }); err != nil {
				return DemoteResult{}, err
			}
			r := *rec
			r.Repeated = true
			return r, nil
		}
		if o.Writable() {
			if err := k.fence(ctx, FenceInstruction, 30*time.Second); err != nil {
				return DemoteResult{}, err
			}
		}
		shutdown = "fast"
		if err := k.pg.Stop(ctx, "fast", 60*time.Second); err != nil {
			k.log.Warn("fast shutdown for the demotion failed; stopping immediately (the final LSN is still read exactly)", "err", err)
			shutdown = "immediate"
			if err := k.pg.Stop(ctx, "immediate", 30*time.Second); err != nil {
				return DemoteResult{}, err
			}
		}
		if k.checkRunning(ctx) {
			return DemoteResult{}, errors.New("pg_ctl stop returned but a postmaster still runs; retry")
		}
	} else if k.pg.StandbyConfigured() {
		// Stopped after step 4 (the keeper was interrupted): the record holds the measurement
		// of the untouched WAL; only the start is left.
		if !same {
			return DemoteResult{}, fmt.Errorf("PostgreSQL is stopped and configured as a standby, not by this event's DEMOTE to %s; check the cluster with regent status", upstream)
		}
		return k.startDemoted(ctx, *rec)
	}
	stopped := time.Now()
	l := rejoin.Local{BinDir: k.cfg.BinDir, DataDir: k.cfg.DataDir}
	if os.Geteuid() == 0 {
		l.RunAs = k.cfg.RunAs
	}
	final, tli, err := rejoin.FinalLSN(ctx, l)
	measured := time.Now()
	if err != nil {
		return DemoteResult{}, fmt.Errorf("reading the end of the stopped server's WAL: %w", err)
	}
	// Its standbys' slots: they would hold WAL on it for ever once it is a standby itself.
	dropped, err := rejoin.RemoveSlots(l)
	if err != nil {
		return DemoteResult{}, fmt.Errorf("removing the former standbys' replication slots: %w", err)
	}
	p := k.cfg.Postgres
	pw, err := p.Password(host, port, p.Database, p.User)
	if err != nil {
		return DemoteResult{}, fmt.Errorf("reading the password for the upstream %s: %w", upstream, err)
	}
	up := pgconnect.Target{Host: host, Port: port, User: p.User, Database: p.Database, Password: pw,
		SSLMode: p.SSLMode, Cluster: k.cfg.Cluster}
	slot := slotName(k.cfg.NodeName)
	if err := rejoin.CreateSlot(ctx, up, slot); err != nil {
		k.log.Warn("demote: no replication slot on the upstream; streaming without one (wal_keep_size bounds what it keeps)", "err", err)
		slot = ""
	}
	if err := rejoin.ConfigureStandby(l, rejoin.ConninfoFor(up, k.cfg.NodeName), slot); err != nil {
		return DemoteResult{}, err
	}
	if !k.pg.StandbyConfigured() {
		return DemoteResult{}, errors.New("ConfigureStandby left no standby.signal; not starting the server")
	}
	res := DemoteResult{Token: tok, FinalLSN: final, Timeline: tli, Upstream: upstream, Slot: slot, Shutdown: shutdown, DroppedSlots: dropped,
		StopMs: stopped.Sub(start).Milliseconds(), MeasureMs: measured.Sub(stopped).Milliseconds(), ConfigureMs: time.Since(measured).Milliseconds()}
	if err := k.writeDemote(res); err != nil {
		return DemoteResult{}, err
	}
	k.log.Warn("demoted: clean shutdown measured", "final_lsn", pglsn.Format(final), "timeline", tli, "shutdown", shutdown)
	return k.startDemoted(ctx, res)
}

// startDemoted lifts the primary's marks and starts the configured standby.
func (k *Keeper) startDemoted(ctx context.Context, res DemoteResult) (DemoteResult, error) {
	if err := k.state.Update(func(s *State) { s.Fence, s.FenceEpoch, s.Stopped = FenceNone, 0, false }); err != nil {
		return DemoteResult{}, err
	}
	k.mu.Lock()
	k.lease.designated = false
	k.lastInRecovery = time.Now()
	k.nextStart = time.Time{}
	k.mu.Unlock()
	start := time.Now()
	if err := k.pg.Start(ctx, false); err != nil {
		k.checkRunning(ctx)
		return DemoteResult{}, fmt.Errorf("configured as a standby of %s, but it did not start: %w", res.Upstream, err)
	}
	res.StartMs = time.Since(start).Milliseconds()
	k.checkRunning(ctx)
	k.observe(ctx, 5*time.Second)
	k.log.Warn("demoted: running as a standby", "upstream", res.Upstream, "final_lsn", pglsn.Format(res.FinalLSN), "dropped_slots", res.DroppedSlots)
	return res, nil
}
