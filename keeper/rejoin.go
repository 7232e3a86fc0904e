package keeper

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/regentdb/regent/internal/pglsn"
	"github.com/regentdb/regent/pgconnect"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
	"github.com/regentdb/regent/rejoin"
)

// heartbeatTable is the table regent's leader writes on every primary each second
// (heartbeat.Schema); its commits are not counted as lost transactions.
const heartbeatTable = "regent.heartbeat"

// RejoinResult is the machine-readable summary of a rejoin, returned in
// InstructResponse.detail (as JSON) and kept in the keeper's state.
type RejoinResult struct {
	// Method is how the data directory was brought onto the new timeline: rewind or reclone.
	Method string `json:"method"`
	// DataLossBytes is the old final LSN minus the fork point; LostTransactions the commits
	// in between that wrote anything but regent's heartbeat table (HeartbeatCommits counts
	// those). Both are -1 when unknown: LostTransactions when the WAL to count them was gone,
	// both when an interrupted rejoin resumed on a data directory already rewound (Note).
	DataLossBytes    int64  `json:"data_loss_bytes"`
	LostTransactions int    `json:"lost_transactions"`
	HeartbeatCommits int    `json:"heartbeat_commits"`
	FinalLSN         string `json:"final_lsn"`
	ForkLSN          string `json:"fork_lsn"`
	Timeline         uint32 `json:"timeline"`
	NewTimeline      uint32 `json:"new_timeline"`
	Upstream         string `json:"upstream"`
	Slot             string `json:"slot"`
	// Resumed: an earlier, interrupted attempt had already rewound or re-cloned the data
	// directory; Note says what that means for the figures.
	Resumed    bool      `json:"resumed,omitempty"`
	Note       string    `json:"note,omitempty"`
	FinishedAt time.Time `json:"finished_at,omitzero"`
}

// rejoinProgress is what the keeper knows of rejoins beyond its durable state: whether one
// runs now, and the last attempt that failed (newer than the last completed one).
type rejoinProgress struct {
	running atomic.Bool
	mu      sync.Mutex
	failed  *regentv1.RejoinReport
}

// slotName is the replication slot a node streams through, as pgtest.SlotName names it.
func slotName(node string) string { return strings.ReplaceAll(node, "-", "_") + "_slot" }

// rejoinStarted reports whether an earlier REJOIN already changed the data directory: it
// holds a rewind or clone waiting to be replayed (backup_label) or is configured as a standby
// (standby.signal, which only ConfigureStandby writes on an old primary).
func (k *Keeper) rejoinStarted() (bool, string) {
	if _, err := os.Stat(filepath.Join(k.cfg.DataDir, "backup_label")); err == nil {
		return true, "backup_label: already rewound or re-cloned"
	}
	if _, err := os.Stat(filepath.Join(k.cfg.DataDir, "standby.signal")); err == nil {
		return true, "standby.signal: already configured as a standby"
	}
	return false, ""
}

// leftForRejoin reports whether the keeper's startup must leave its stopped server for the
// leader's REJOIN: the data directory is a primary's (no standby.signal) and the witnesses name
// another node primary — this is an old primary after a failover. Starting it, even read-only,
// would run crash recovery and append WAL of its own before the REJOIN measures what the
// failover lost, and no client may write to it anyway.
func (k *Keeper) leftForRejoin() (bool, string) {
	if k.pg.StandbyConfigured() {
		return false, ""
	}
	k.mu.Lock()
	primary := k.lease.primary
	k.mu.Unlock()
	if primary == "" || primary == k.cfg.NodeName {
		return false, ""
	}
	return true, fmt.Sprintf("the witnesses name %s primary: this is an old primary, which only a REJOIN starts again (as a standby)", primary)
}

// doRejoin brings this old primary back as a standby of upstream (see DESIGN.md, "Rejoin");
// actMu is held and the token recorded. An equal token repeated after success answers the
// recorded result without redoing anything, and so does a newer leader's token for the same
// event while the server is still the standby that rejoin configured (a leader elected after
// the rejoin, before it was recorded, must not rewind it again: the loss could no longer be
// measured). A rejoin interrupted after it changed the data
// directory (the keeper was killed) resumes: it does not measure again — the measurement
// saved before the rewind is reported, or the loss is unknown (-1) when none was saved.
func (k *Keeper) doRejoin(ctx context.Context, tok Token, host string, port uint16) (bool, string, error) {
	if st := k.state.Get(); st.Rejoin != "" && (st.RejoinToken == tok || st.RejoinToken.Event == tok.Event && k.pg.StandbyConfigured()) {
		return true, st.Rejoin, nil
	}
	if host == "" || port == 0 {
		return false, "", errors.New("REJOIN needs upstream_host and upstream_port: the new primary to stream from")
	}
	if k.cfg.Host == host && k.cfg.Port == port {
		return false, "", fmt.Errorf("REJOIN upstream %s:%d is this node's own server", host, port)
	}
	k.rejoin.running.Store(true)
	defer k.rejoin.running.Store(false)
	// Keep it fenced: a writable server is fenced first (nothing may be written between here
	// and the stop), then it is stopped; the stop is fast (clean) and else immediate.
	if k.checkRunning(ctx) {
		if o := k.observe(ctx, 5*time.Second); o.Writable() {
			if err := k.fence(ctx, FenceInstruction, 30*time.Second); err != nil {
				return false, "", err
			}
		}
		if err := k.pg.Stop(ctx, "fast", 60*time.Second); err != nil {
			k.log.Warn("fast shutdown before the rejoin failed; stopping immediately", "err", err)
			if err := k.pg.Stop(ctx, "immediate", 30*time.Second); err != nil {
				return false, "", err
			}
		}
		if k.checkRunning(ctx) {
			return false, "", errors.New("pg_ctl stop returned but a postmaster still runs; retry")
		}
	}
	// Durably stopped until the rejoin completes: a keeper restarted half way must not start
	// a rewound data directory (without standby.signal it would end recovery as a primary of
	// a timeline of its own); only a REJOIN (or RESTART) starts it again.
	if err := k.state.Update(func(s *State) { s.Stopped = true }); err != nil {
		return false, "", err
	}
	p := k.cfg.Postgres
	pw, err := p.Password(host, port, p.Database, p.User)
	if err != nil {
		return false, "", fmt.Errorf("reading the password for the new primary: %w", err)
	}
	up := pgconnect.Target{Host: host, Port: port, User: p.User, Database: p.Database, Password: pw,
		SSLMode: p.SSLMode, Cluster: k.cfg.Cluster}
	l := rejoin.Local{BinDir: k.cfg.BinDir, DataDir: k.cfg.DataDir}
	if os.Geteuid() == 0 {
		l.RunAs = k.cfg.RunAs
	}
	r, err := k.rejoinMeasure(ctx, l, up)
	if err != nil {
		return false, "", err
	}
	r.Upstream, r.Slot = fmt.Sprintf("%s:%d", host, port), slotName(k.cfg.NodeName)
	if err := rejoin.CreateSlot(ctx, up, r.Slot); err != nil {
		return false, "", err
	}
	// A data directory already configured as a standby (and past its backup_label: it was
	// started once) is on the new timeline; only its configuration is written again.
	_, labelErr := os.Stat(filepath.Join(k.cfg.DataDir, "backup_label"))
	if !(k.pg.StandbyConfigured() && errors.Is(labelErr, os.ErrNotExist)) {
		res, err := rejoin.Rewind(ctx, l, up, rejoin.RewindOptions{AllowReclone: true, Logger: k.log})
		if err != nil {
			return false, "", err
		}
		r.Method = string(res.Method)
		if res.Resumed {
			r.Resumed = true
		}
	}
	if r.Method == "" {
		r.Method = "resumed"
	}
	if err := k.saveRejoinPartial(r); err != nil {
		return false, "", err
	}
	if err := rejoin.ConfigureStandby(l, rejoin.ConninfoFor(up, k.cfg.NodeName), r.Slot); err != nil {
		return false, "", err
	}
	if !k.pg.StandbyConfigured() {
		return false, "", errors.New("ConfigureStandby left no standby.signal; not starting the server")
	}
	// No longer the primary: the fence marks are for a primary; a standby is covered by the
	// in-recovery obligation (standby.signal is in place before it starts).
	if err := k.state.Update(func(s *State) { s.Fence, s.FenceEpoch, s.Stopped = FenceNone, 0, false }); err != nil {
		return false, "", err
	}
	k.mu.Lock()
	k.lease.designated = false
	k.lastInRecovery = time.Now()
	k.nextStart = time.Time{}
	k.mu.Unlock()
	if err := k.pg.Start(ctx, false); err != nil {
		k.checkRunning(ctx)
		return false, "", fmt.Errorf("rewound and configured, but the standby did not start: %w; the next REJOIN resumes from here", err)
	}
	k.checkRunning(ctx)
	k.observe(ctx, 5*time.Second)
	r.FinishedAt = time.Now().UTC()
	b, err := json.Marshal(r)
	if err != nil {
		return false, "", err
	}
	detail := string(b)
	if err := k.state.Update(func(s *State) { s.RejoinToken, s.Rejoin, s.RejoinPartial = tok, detail, "" }); err != nil {
		return false, "", err
	}
	k.log.Warn("rejoined as a standby", "result", detail)
	return true, detail, nil
}

// rejoinMeasure measures the data loss before anything changes the data directory, and saves
// the figures durably (State.RejoinPartial) so that a rejoin interrupted after the rewind
// still reports them. A data directory an earlier attempt already changed is not measured
// again (the WAL measured is gone): the saved figures, or -1 for unknown, with a note.
func (k *Keeper) rejoinMeasure(ctx context.Context, l rejoin.Local, up pgconnect.Target) (RejoinResult, error) {
	if saved := k.state.Get().RejoinPartial; saved != "" {
		var r RejoinResult
		if err := json.Unmarshal([]byte(saved), &r); err == nil {
			if started, _ := k.rejoinStarted(); started {
				r.Resumed = true
				r.Note = "resumed an interrupted rejoin; the figures were measured before its rewind"
			}
			k.log.Warn("rejoin: using the loss measured by an earlier attempt", "result", saved)
			return r, nil
		}
		k.log.Error("rejoin: the saved measurement is unreadable; measuring again", "saved", saved)
	}
	if started, why := k.rejoinStarted(); started {
		k.log.Warn("rejoin: resuming an interrupted rejoin; the data loss cannot be measured any more", "why", why)
		return RejoinResult{DataLossBytes: -1, LostTransactions: -1, HeartbeatCommits: -1, Resumed: true,
			Note: "resumed an interrupted rejoin (" + why + "): the old WAL is gone, so the data loss is unknown"}, nil
	}
	exclude, err := rejoin.TableRelFiles(ctx, up, heartbeatTable)
	if err != nil {
		return RejoinResult{}, fmt.Errorf("looking up regent's heartbeat table on the new primary: %w", err)
	}
	loss, err := rejoin.MeasureWith(ctx, l, up, rejoin.ScanOptions{Exclude: exclude})
	if err != nil && !errors.Is(err, rejoin.ErrWALMissing) {
		return RejoinResult{}, fmt.Errorf("measuring the data loss: %w", err)
	}
	k.log.Warn("rejoin: data loss measured", "loss", loss, "heartbeat_commits", loss.WAL.Excluded)
	r := RejoinResult{DataLossBytes: loss.Bytes, LostTransactions: loss.Transactions, HeartbeatCommits: loss.WAL.Excluded,
		FinalLSN: pglsn.Format(loss.FinalLSN), ForkLSN: pglsn.Format(loss.ForkLSN), Timeline: loss.Timeline, NewTimeline: loss.NewTimeline}
	if loss.Transactions < 0 {
		r.HeartbeatCommits = -1
		r.Note = "the WAL after the fork point is no longer in pg_wal: the lost transactions cannot be counted (the bytes are exact)"
	}
	if err := k.saveRejoinPartial(r); err != nil {
		return RejoinResult{}, err
	}
	return r, nil
}

// saveRejoinPartial keeps an unfinished rejoin's figures in the durable state.
func (k *Keeper) saveRejoinPartial(r RejoinResult) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return k.state.Update(func(s *State) { s.RejoinPartial = string(b) })
}

// rejoinReport is the RejoinReport of a REJOIN instruction that answered done with detail,
// or failed with err; a failure is also kept for KeeperStatus.
func (k *Keeper) rejoinReport(tok Token, done bool, detail string, err error) *regentv1.RejoinReport {
	if done {
		if rep := reportOf(tok, detail); rep != nil {
			return rep
		}
	}
	msg := detail
	if err != nil {
		msg = err.Error()
	}
	rep := &regentv1.RejoinReport{Token: tok.Proto(), Error: msg, DataLossBytes: -1, LostTransactions: -1,
		FinishedAt: timestamppb.Now()}
	k.rejoin.mu.Lock()
	k.rejoin.failed = rep
	k.rejoin.mu.Unlock()
	return rep
}

// reportOf turns a completed rejoin's JSON detail into a RejoinReport (nil if unreadable).
func reportOf(tok Token, detail string) *regentv1.RejoinReport {
	var r RejoinResult
	if err := json.Unmarshal([]byte(detail), &r); err != nil {
		return nil
	}
	rep := &regentv1.RejoinReport{Token: tok.Proto(), Ok: true, Method: r.Method, DataLossBytes: r.DataLossBytes,
		LostTransactions: int64(r.LostTransactions), Upstream: r.Upstream, Error: r.Note}
	rep.FinalLsn, _ = pglsn.Parse(r.FinalLSN)
	rep.ForkLsn, _ = pglsn.Parse(r.ForkLSN)
	if !r.FinishedAt.IsZero() {
		rep.FinishedAt = timestamppb.New(r.FinishedAt)
	}
	return rep
}

// lastRejoinReport is the newest of the last completed rejoin and the last failed attempt;
// nil when there was none.
func (k *Keeper) lastRejoinReport() *regentv1.RejoinReport {
	st := k.state.Get()
	var done *regentv1.RejoinReport
	if st.Rejoin != "" {
		done = reportOf(st.RejoinToken, st.Rejoin)
	}
	k.rejoin.mu.Lock()
	failed := k.rejoin.failed
	k.rejoin.mu.Unlock()
	if failed != nil && (done == nil || done.GetFinishedAt().AsTime().Before(failed.GetFinishedAt().AsTime())) {
		return failed
	}
	return done
}
