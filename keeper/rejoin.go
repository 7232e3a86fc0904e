package keeper

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/regentdb/regent/pgconnect"
	"github.com/regentdb/regent/rejoin"
)

// RejoinResult is the machine-readable summary of a rejoin, returned in
// InstructResponse.detail (as JSON) and kept in the keeper's state.
type RejoinResult struct {
	// Method is how the data directory was brought onto the new timeline: rewind or reclone.
	Method string `json:"method"`
	// DataLossBytes is the old final LSN minus the fork point; LostTransactions the commits
	// in between (-1 when the WAL to count them was gone).
	DataLossBytes    int64  `json:"data_loss_bytes"`
	LostTransactions int    `json:"lost_transactions"`
	FinalLSN         string `json:"final_lsn"`
	ForkLSN          string `json:"fork_lsn"`
	Timeline         uint32 `json:"timeline"`
	NewTimeline      uint32 `json:"new_timeline"`
	Upstream         string `json:"upstream"`
	Slot             string `json:"slot"`
}

// slotName is the replication slot a node streams through, as pgtest.SlotName names it.
func slotName(node string) string { return strings.ReplaceAll(node, "-", "_") + "_slot" }

// doRejoin brings this old primary back as a standby of upstream (see DESIGN.md, "Rejoin");
// actMu is held and the token recorded. An equal token repeated after success answers the
// recorded result without redoing anything.
func (k *Keeper) doRejoin(ctx context.Context, tok Token, host string, port uint16) (bool, string, error) {
	if st := k.state.Get(); st.Rejoin != "" && st.RejoinToken == tok {
		return true, st.Rejoin, nil
	}
	if host == "" || port == 0 {
		return false, "", errors.New("REJOIN needs upstream_host and upstream_port: the new primary to stream from")
	}
	if k.cfg.Host == host && k.cfg.Port == port {
		return false, "", fmt.Errorf("REJOIN upstream %s:%d is this node's own server", host, port)
	}
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
	loss, err := rejoin.Measure(ctx, l, up)
	if err != nil && !errors.Is(err, rejoin.ErrWALMissing) {
		return false, "", fmt.Errorf("measuring the data loss: %w", err)
	}
	k.log.Warn("rejoin: data loss measured", "loss", loss)
	slot := slotName(k.cfg.NodeName)
	if err := rejoin.CreateSlot(ctx, up, slot); err != nil {
		return false, "", err
	}
	res, err := rejoin.Rewind(ctx, l, up, rejoin.RewindOptions{AllowReclone: true, Logger: k.log})
	if err != nil {
		return false, "", err
	}
	if err := rejoin.ConfigureStandby(l, rejoin.ConninfoFor(up, k.cfg.NodeName), slot); err != nil {
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
		return false, "", fmt.Errorf("rewound and configured, but the standby did not start: %w", err)
	}
	k.checkRunning(ctx)
	k.observe(ctx, 5*time.Second)
	r := RejoinResult{Method: string(res.Method), DataLossBytes: loss.Bytes, LostTransactions: loss.Transactions,
		FinalLSN: formatLSN(loss.FinalLSN), ForkLSN: formatLSN(loss.ForkLSN), Timeline: loss.Timeline,
		NewTimeline: loss.NewTimeline, Upstream: fmt.Sprintf("%s:%d", host, port), Slot: slot}
	b, err := json.Marshal(r)
	if err != nil {
		return false, "", err
	}
	detail := string(b)
	if err := k.state.Update(func(s *State) { s.RejoinToken, s.Rejoin = tok, detail }); err != nil {
		return false, "", err
	}
	k.log.Warn("rejoined as a standby", "result", detail)
	return true, detail, nil
}
