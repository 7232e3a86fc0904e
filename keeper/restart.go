package keeper

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// Restarting a crashed primary in place (DESIGN.md, "Crash restart in place").
//
// When the designated primary's postmaster is gone and no STOP holds it down, the keeper starts
// it again where it is, and says so in KeeperStatus (restarting, restart_elapsed_ms), so that
// the leader holds off an automatic failover for the policy's primary_start_timeout instead of
// promoting a standby over a server that is about to come back. The report must not race the
// witnesses' probes:
//
//   - it begins the moment the keeper sees the postmaster gone — at its next check (every
//     lease_ttl/4), or when the leader asks (KeeperStatus looks for itself), whichever is first,
//     so a leader that decides after down_after always hears of a crash the keeper will repair;
//   - it lasts restartSettle past the moment the server answers again, so a leader whose
//     committed votes still say "down" (the witnesses have not probed the restarted server
//     yet) is not told "not restarting" in that gap;
//   - it ends at once when restarting fails twice in a row (a broken configuration, a data
//     directory PostgreSQL refuses): then nothing is coming back, and the leader should fail
//     over without waiting — its STOP finds the server down and confirms the fence at once.

// restartSettle is how long the keeper keeps reporting a finished restart: time for the
// witnesses to probe the restarted server and commit it reachable (a few probe intervals).
const restartSettle = 5 * time.Second

// restartRetry is the wait before the second attempt of an in-place restart.
const restartRetry = 300 * time.Millisecond

// restartGiveUp is the number of consecutive failed starts after which the keeper no longer
// reports a restart in progress (it keeps trying, with backoff).
const restartGiveUp = 2

// restartState tracks one in-place restart; Keeper.mu guards it.
type restartState struct {
	since    time.Time // when the keeper saw the postmaster gone; zero: no restart
	answered time.Time // when the restarted server first answered; zero: not yet
	gaveUp   bool      // restartGiveUp starts failed in a row
}

// begin starts tracking a restart at now, unless one is being tracked.
func (r *restartState) begin(now time.Time) {
	if r.since.IsZero() {
		*r = restartState{since: now}
	}
}

// active reports whether a restart is being tracked (reported or not).
func (r *restartState) active() bool { return !r.since.IsZero() }

// failed records the n-th consecutive failed start.
func (r *restartState) failed(n int) {
	if r.active() && n >= restartGiveUp {
		r.gaveUp = true
	}
}

// answered records that the server answers at now; the restart ends restartSettle later.
func (r *restartState) answeredAt(now time.Time) {
	if r.active() && r.answered.IsZero() {
		r.answered = now
	}
}

// report says whether to report a restart in progress at now, and for how long it has run.
// A restart that settled is forgotten.
func (r *restartState) report(now time.Time) (bool, time.Duration) {
	if !r.active() {
		return false, 0
	}
	if !r.answered.IsZero() && now.Sub(r.answered) >= restartSettle {
		*r = restartState{}
		return false, 0
	}
	if r.gaveUp {
		return false, 0
	}
	return true, now.Sub(r.since)
}

// persistReadOnly makes a stopped server start read-only for every new transaction by
// appending default_transaction_read_only = 'on' to postgresql.auto.conf, as ALTER SYSTEM SET
// would (the last setting of a parameter wins, and fencing.UnfenceSQL's ALTER SYSTEM RESET
// removes it). A file the keeper creates is given the data directory's owner.
func persistReadOnly(dataDir string) error {
	path := filepath.Join(dataDir, "postgresql.auto.conf")
	_, statErr := os.Stat(path)
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	_, err = f.WriteString("\ndefault_transaction_read_only = 'on'\n")
	if serr := f.Sync(); err == nil {
		err = serr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if errors.Is(statErr, os.ErrNotExist) {
		if fi, err := os.Stat(dataDir); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				if err := os.Chown(path, int(st.Uid), int(st.Gid)); err != nil {
					return fmt.Errorf("give %s to the data directory's owner: %w", path, err)
				}
			}
		}
	}
	return nil
}
