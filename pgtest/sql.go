package pgtest

import (
	"context"
	"fmt"
)

// LSNs is a server's WAL position, as byte offsets (the numeric value of a
// pg_lsn; "16/B374D848" is 0x16B374D848).
type LSNs struct {
	// InRecovery is pg_is_in_recovery(): true on a standby.
	InRecovery bool
	// Current is pg_current_wal_lsn() on a primary; 0 on a standby.
	Current uint64
	// Received is pg_last_wal_receive_lsn() on a standby; 0 on a primary
	// or when nothing was streamed yet.
	Received uint64
	// Replayed is pg_last_wal_replay_lsn() on a standby; 0 on a primary.
	Replayed uint64
}

// Position is the server's own progress: Current on a primary, Replayed on
// a standby.
func (l LSNs) Position() uint64 {
	if l.InRecovery {
		return l.Replayed
	}
	return l.Current
}

// LSNs reads the server's WAL positions in one query.
func (s *Server) LSNs(ctx context.Context) (LSNs, error) {
	var l LSNs
	var cur, rec, rep int64
	err := s.QueryRow(ctx, `SELECT pg_is_in_recovery(),
		CASE WHEN pg_is_in_recovery() THEN 0 ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint END,
		coalesce(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), '0/0'), 0)::bigint,
		coalesce(pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0'), 0)::bigint`).Scan(&l.InRecovery, &cur, &rec, &rep)
	if err != nil {
		return LSNs{}, err
	}
	l.Current, l.Received, l.Replayed = uint64(cur), uint64(rec), uint64(rep)
	return l, nil
}

// IsInRecovery reports pg_is_in_recovery(): true on a standby.
func (s *Server) IsInRecovery(ctx context.Context) (bool, error) {
	var b bool
	err := s.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&b)
	return b, err
}

// SystemIdentifier returns the cluster's system identifier from
// pg_control_system(); a primary and the standbys cloned from it share it.
func (s *Server) SystemIdentifier(ctx context.Context) (uint64, error) {
	var id int64
	err := s.QueryRow(ctx, "SELECT system_identifier FROM pg_control_system()").Scan(&id)
	return uint64(id), err
}

// Timeline returns the timeline the server writes (a primary) or receives
// (a standby streaming WAL), falling back to the last checkpoint's timeline.
func (s *Server) Timeline(ctx context.Context) (uint32, error) {
	var tli int64
	err := s.QueryRow(ctx, `SELECT CASE
		WHEN NOT pg_is_in_recovery() THEN ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint
		ELSE coalesce((SELECT received_tli FROM pg_stat_wal_receiver), (SELECT timeline_id FROM pg_control_checkpoint()))
		END`).Scan(&tli)
	return uint32(tli), err
}

// Promote promotes a standby with pg_promote() and waits until it accepts
// writes. Promoting a server that is not in recovery does nothing.
func (s *Server) Promote(ctx context.Context) error {
	rec, err := s.IsInRecovery(ctx)
	if err != nil {
		return err
	}
	if !rec {
		return nil
	}
	var ok bool
	if err := s.QueryRow(ctx, "SELECT pg_promote(true, 60)").Scan(&ok); err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("pgtest: pg_promote on %s did not finish within 60s; see %s", s, s.LogPath)
	}
	return WaitFor(ctx, func(ctx context.Context) (bool, error) {
		rec, err := s.IsInRecovery(ctx)
		return err == nil && !rec, err
	})
}

// PauseReplay asks a standby to pause WAL replay (pg_wal_replay_pause()).
// WAL keeps being received; ReplayPauseState tells when the pause took effect.
func (s *Server) PauseReplay(ctx context.Context) error {
	return s.Exec(ctx, "SELECT pg_wal_replay_pause()")
}

// ResumeReplay resumes WAL replay on a standby (pg_wal_replay_resume()).
func (s *Server) ResumeReplay(ctx context.Context) error {
	return s.Exec(ctx, "SELECT pg_wal_replay_resume()")
}

// ReplayPauseState returns pg_get_wal_replay_pause_state() on a standby:
// "not paused", "pause requested" or "paused" (PostgreSQL 14 or later).
func (s *Server) ReplayPauseState(ctx context.Context) (string, error) {
	var st string
	err := s.QueryRow(ctx, "SELECT pg_get_wal_replay_pause_state()").Scan(&st)
	return st, err
}

// WaitReplayPaused waits until replay on a standby is actually paused.
func (s *Server) WaitReplayPaused(ctx context.Context) error {
	return WaitFor(ctx, func(ctx context.Context) (bool, error) {
		st, err := s.ReplayPauseState(ctx)
		return st == "paused", err
	})
}

// WalReceiverStatus returns the status column of pg_stat_wal_receiver
// (e.g. "streaming"), or "" when no WAL receiver runs.
func (s *Server) WalReceiverStatus(ctx context.Context) (string, error) {
	var st string
	err := s.QueryRow(ctx, "SELECT coalesce((SELECT status FROM pg_stat_wal_receiver), '')").Scan(&st)
	return st, err
}

// WaitStreaming waits until the standby's WAL receiver is streaming.
func (s *Server) WaitStreaming(ctx context.Context) error {
	err := WaitFor(ctx, func(ctx context.Context) (bool, error) {
		st, err := s.WalReceiverStatus(ctx)
		if err == nil && st != "streaming" {
			err = fmt.Errorf("WAL receiver status is %q", st)
		}
		return err == nil, err
	})
	if err != nil {
		return fmt.Errorf("pgtest: %s is not streaming: %w; see %s", s, err, s.LogPath)
	}
	return nil
}

// WaitReplayed waits until the standby has replayed WAL up to lsn.
func (s *Server) WaitReplayed(ctx context.Context, lsn uint64) error {
	var last uint64
	err := WaitFor(ctx, func(ctx context.Context) (bool, error) {
		l, err := s.LSNs(ctx)
		last = l.Replayed
		return err == nil && l.Replayed >= lsn, err
	})
	if err != nil {
		return fmt.Errorf("pgtest: %s did not replay up to %X (replayed %X): %w", s, lsn, last, err)
	}
	return nil
}

// WaitCaughtUp waits until the standby has replayed everything upstream had
// written when WaitCaughtUp was called.
func (s *Server) WaitCaughtUp(ctx context.Context, upstream *Server) error {
	l, err := upstream.LSNs(ctx)
	if err != nil {
		return err
	}
	return s.WaitReplayed(ctx, l.Position())
}

// Checkpoint runs CHECKPOINT (a restartpoint on a standby).
func (s *Server) Checkpoint(ctx context.Context) error { return s.Exec(ctx, "CHECKPOINT") }

// Reload makes the server re-read its configuration (pg_reload_conf()).
func (s *Server) Reload(ctx context.Context) error { return s.Exec(ctx, "SELECT pg_reload_conf()") }

// MissingRows returns those of ids that have no row in the WriteLoad table
// on this server: after a failover, the acknowledged writes that were lost.
func (s *Server) MissingRows(ctx context.Context, ids []int64) ([]int64, error) {
	c, err := s.Connect(ctx)
	if err != nil {
		return nil, err
	}
	defer c.Close(context.Background())
	rows, err := c.Query(ctx, `SELECT i FROM unnest($1::bigint[]) AS i WHERE NOT EXISTS (SELECT 1 FROM `+LoadTable+` WHERE id = i) ORDER BY i`, ids)
	if err != nil {
		return nil, fmt.Errorf("pgtest: looking for rows on %s: %w", s, err)
	}
	var missing []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		missing = append(missing, id)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("pgtest: looking for rows on %s: %w", s, err)
	}
	return missing, nil
}
