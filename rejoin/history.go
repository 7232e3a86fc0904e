package rejoin

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/regentdb/regent/internal/pglsn"
	"github.com/regentdb/regent/pgconnect"
)

// appName is the application_name of this package's sessions and of the programs it runs.
const appName = "regent-rejoin"

// TimelineSwitch is one line of a timeline history file: timeline Timeline ended at SwitchLSN,
// where its child timeline began.
type TimelineSwitch struct {
	Timeline  uint32
	SwitchLSN uint64
	// Reason is the rest of the line, e.g. "no recovery target specified".
	Reason string
}

// ParseHistory parses a timeline history file (pg_wal/0000000N.history) as PostgreSQL reads
// it: one "parentTLI<TAB>X/Y<TAB>reason" line per ancestor timeline, oldest first; blank lines
// and lines starting with '#' are skipped; fields are separated by whitespace. Timelines must
// increase from line to line, and so must the switch points.
func ParseHistory(data string) ([]TimelineSwitch, error) {
	var out []TimelineSwitch
	for i, line := range strings.Split(data, "\n") {
		line = strings.TrimLeft(line, " \t\r")
		if line == "" || line[0] == '#' {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			return nil, fmt.Errorf("%w: line %d has no switch point", ErrBadHistory, i+1)
		}
		tli, err := strconv.ParseUint(f[0], 10, 32)
		if err != nil || tli == 0 {
			return nil, fmt.Errorf("%w: line %d: timeline %q is not a positive number", ErrBadHistory, i+1, f[0])
		}
		lsn, err := pglsn.Parse(f[1])
		if err != nil {
			return nil, fmt.Errorf("%w: line %d: %w", ErrBadHistory, i+1, err)
		}
		if n := len(out); n > 0 && (uint32(tli) <= out[n-1].Timeline || lsn < out[n-1].SwitchLSN) {
			return nil, fmt.Errorf("%w: line %d: timeline %d at %s does not follow timeline %d at %s", ErrBadHistory, i+1, tli, pglsn.Format(lsn), out[n-1].Timeline, pglsn.Format(out[n-1].SwitchLSN))
		}
		reason := ""
		if len(f) > 2 {
			_, reason, _ = strings.Cut(line, f[1])
			reason = strings.TrimSpace(reason)
		}
		out = append(out, TimelineSwitch{Timeline: uint32(tli), SwitchLSN: lsn, Reason: reason})
	}
	return out, nil
}

// forkIn returns where history left timeline: the switch point of its line.
func forkIn(history []TimelineSwitch, timeline, current uint32) (uint64, error) {
	for _, s := range history {
		if s.Timeline == timeline {
			return s.SwitchLSN, nil
		}
	}
	return 0, fmt.Errorf("%w: timeline %d is not in the history of timeline %d", ErrNotAncestor, timeline, current)
}

// currentTimelineSQL is the timeline a server is on: the one a primary writes (the first 8 hex
// digits of its current WAL file's name); on a standby, the one its WAL receiver receives,
// else its latest restartpoint's.
const currentTimelineSQL = `SELECT CASE
	WHEN NOT pg_is_in_recovery() THEN ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint
	ELSE coalesce((SELECT received_tli FROM pg_stat_wal_receiver), (SELECT timeline_id FROM pg_control_checkpoint()))::bigint
	END`

// ForkPoint returns where the new primary's history left timeline (the old primary's timeline,
// from FinalLSN): the switch point of that timeline in the new primary's current timeline
// history file, read with pg_read_file (superuser, or pg_read_server_files). WAL before it is
// common to both servers; the old primary's WAL from it on is what the new primary lacks.
//
// Errors, wrapped: ErrSameTimeline when the new primary is still on timeline (nothing forked:
// it was not promoted after the old primary's timeline began); ErrNotAncestor when timeline is
// not in its history (the two servers branched elsewhere, e.g. both were promoted: measure the
// loss by hand).
func ForkPoint(ctx context.Context, newPrimary pgconnect.Target, timeline uint32) (uint64, error) {
	if timeline == 0 {
		return 0, fmt.Errorf("rejoin: ForkPoint needs the old primary's timeline (FinalLSN returns it)")
	}
	c, err := pgconnect.Connect(ctx, newPrimary, appName)
	if err != nil {
		return 0, fmt.Errorf("rejoin: reading the timeline history of %s: %w; retry once it answers", newPrimary, err)
	}
	defer pgconnect.Close(c)
	cur, err := currentTimeline(ctx, c)
	if err != nil {
		return 0, fmt.Errorf("rejoin: reading the timeline of %s: %w", newPrimary, err)
	}
	switch {
	case cur == timeline:
		return 0, fmt.Errorf("%w: %s is on timeline %d, the old primary's; run CHECKPOINT on it if it was just promoted, else nothing forked", ErrSameTimeline, newPrimary, cur)
	case cur < timeline:
		return 0, fmt.Errorf("%w: %s is on timeline %d, before the old primary's %d: it is not the newer server", ErrNotAncestor, newPrimary, cur, timeline)
	}
	file := fmt.Sprintf("pg_wal/%08X.history", cur)
	var data string
	if err := c.QueryRow(ctx, "SELECT pg_read_file($1)", file).Scan(&data); err != nil {
		return 0, fmt.Errorf("rejoin: reading %s on %s: %w; the role needs superuser or pg_read_server_files", file, newPrimary, err)
	}
	h, err := ParseHistory(data)
	if err != nil {
		return 0, fmt.Errorf("rejoin: %s on %s: %w", file, newPrimary, err)
	}
	lsn, err := forkIn(h, timeline, cur)
	if err != nil {
		return 0, fmt.Errorf("rejoin: %s on %s: %w", file, newPrimary, err)
	}
	return lsn, nil
}

func currentTimeline(ctx context.Context, c *pgx.Conn) (uint32, error) {
	var tli int64
	if err := c.QueryRow(ctx, currentTimelineSQL).Scan(&tli); err != nil {
		return 0, err
	}
	return uint32(tli), nil
}

// systemIdentifier reads the server's system identifier.
func systemIdentifier(ctx context.Context, c *pgx.Conn) (uint64, error) {
	var id int64
	if err := c.QueryRow(ctx, "SELECT system_identifier FROM pg_control_system()").Scan(&id); err != nil {
		return 0, err
	}
	return uint64(id), nil
}
