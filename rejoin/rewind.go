package rejoin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/regentdb/regent/pgconnect"
	"github.com/regentdb/regent/pgops"
)

// Method says how Rewind brought the data directory in line with the source.
type Method string

// Methods.
const (
	// MethodNone: pg_rewind found nothing to undo (the node had written nothing after the fork
	// point); it only had to be configured as a standby.
	MethodNone Method = "none"
	// MethodRewind: pg_rewind undid the node's writes after the fork point.
	MethodRewind Method = "rewind"
	// MethodReclone: the data directory was moved aside and cloned anew with pg_basebackup.
	MethodReclone Method = "reclone"
)

// RewindOptions tune Rewind and Reclone. The zero value rewinds, never re-clones, keeps the
// node's own configuration files and removes its replication slots.
type RewindOptions struct {
	// AllowReclone lets Rewind fall back to Reclone when pg_rewind cannot work (ErrRewindImpossible)
	// or failed part way (ErrTargetDamaged).
	AllowReclone bool
	// SourceConfig keeps the configuration files that pg_rewind and pg_basebackup copy from the
	// source. By default the node's own postgresql.conf, postgresql.auto.conf, pg_hba.conf and
	// pg_ident.conf (those in the data directory) are put back afterwards: a rewind changes data,
	// not the node's configuration.
	SourceConfig bool
	// KeepSlots keeps the replication slots the node had as a primary, where Rewind would
	// remove them: a slot left over from the old timeline would hold back WAL removal on the
	// standby for ever. pg_rewind 14 and later empties pg_replslot itself when it rewinds;
	// Rewind removes what is left (after "no rewind required", or with older versions).
	KeepSlots bool
	// Logger receives progress messages (never a password); nil logs nothing.
	Logger *slog.Logger
}

func (o RewindOptions) logger() *slog.Logger {
	if o.Logger == nil {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return o.Logger
}

// Timings are how long each step of Rewind or Reclone took; a step that did not run is zero.
type Timings struct {
	// CrashRecovery is the single-user run that finished crash recovery.
	CrashRecovery time.Duration
	// Checkpoint is the CHECKPOINT on the source.
	Checkpoint time.Duration
	// Rewind is pg_rewind's run, successful or not.
	Rewind time.Duration
	// Reclone is moving the data directory aside and pg_basebackup.
	Reclone time.Duration
	// Total is the whole call.
	Total time.Duration
}

// Result is what Rewind or Reclone did.
type Result struct {
	// Method is how the data directory was synchronised.
	Method Method
	// Resumed is true when an earlier call had already synchronised the data directory (it
	// holds pg_rewind's backup_label, or a finished base backup's backup_label and
	// backup_manifest, waiting to be replayed) and so nothing was run this time. If that call
	// was interrupted between pg_rewind and putting the node's configuration files back, they
	// are the source's.
	Resumed bool
	// CrashRecovered is true when the server had not been stopped cleanly and crash recovery was
	// completed in single-user mode first; CrashRecoveryLog is that run's output (its server
	// log), which names where the WAL ended ("invalid record length at X/Y", "redo done at ...").
	CrashRecovered   bool
	CrashRecoveryLog string
	// RewindLog is the tail of pg_rewind's output (it holds no password).
	RewindLog string
	// RewindImpossible says why pg_rewind could not be used when Rewind re-cloned instead.
	RewindImpossible string
	// AsideDir is where Reclone moved the old data directory; it is kept for the operator
	// (delete it once the node is healthy; it holds a full copy of the old data).
	AsideDir string
	// RemovedSlots are the replication slots removed after a rewind.
	RemovedSlots []string
	// SourceTimeline is the source's timeline after its CHECKPOINT.
	SourceTimeline uint32
	// Timings are the duration of each step.
	Timings Timings
}

// configFiles are the configuration files kept across a rewind or re-clone unless
// RewindOptions.SourceConfig.
var configFiles = []string{"postgresql.conf", "postgresql.auto.conf", "pg_hba.conf", "pg_ident.conf"}

type savedFile struct {
	data []byte
	mode fs.FileMode
}

// saveConfig reads the configuration files present in dir.
func saveConfig(dir string) (map[string]savedFile, error) {
	saved := map[string]savedFile{}
	for _, name := range configFiles {
		p := filepath.Join(dir, name)
		fi, err := os.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("rejoin: saving %s: %w", p, err)
		}
		if !fi.Mode().IsRegular() {
			continue // a symlink to a shared file is left to whatever replaces it
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("rejoin: saving %s: %w", p, err)
		}
		saved[name] = savedFile{data: b, mode: fi.Mode().Perm()}
	}
	return saved, nil
}

// restoreConfig writes the saved configuration files back into dir.
func restoreConfig(u *osUser, dir string, saved map[string]savedFile) error {
	names := make([]string, 0, len(saved))
	for n := range saved {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if err := writeFileAtomic(u, filepath.Join(dir, n), saved[n].data, saved[n].mode); err != nil {
			return fmt.Errorf("%w; the node's own %s could not be put back: restore it by hand before starting the server", err, n)
		}
	}
	return nil
}

// CompleteCrashRecovery finishes crash recovery of a server that was killed (or crashed) while
// running as a primary, without it ever accepting a connection: it runs
// `postgres --single -D DataDir template1` with standard input at end of file. The single-user
// backend replays the WAL, writes its end-of-recovery checkpoint, reads no command and shuts
// down cleanly; it opens no TCP or Unix socket, so no client can write to the old primary in
// between, and it runs no SQL of its own (so it commits nothing). log_destination is forced to
// stderr so that the recovery messages come back in the output.
//
// A server stopped cleanly ("shut down", "shut down in recovery") is left alone: ran is false.
// A server that was in archive recovery (a standby), or has standby.signal, recovery.signal or
// backup_label, is refused with ErrNotCleanlyStopped: single-user mode cannot run standby mode,
// archive recovery would end by choosing a new timeline of its own, and recovery from a
// backup_label (a rewind or base backup waiting to be replayed) would end with the node a
// primary of the new timeline. Call it with the server stopped; it
// fails with ErrRunning otherwise.
func CompleteCrashRecovery(ctx context.Context, l Local) (ran bool, output string, err error) {
	if err := l.validate(); err != nil {
		return false, "", err
	}
	u, err := l.resolveUser()
	if err != nil {
		return false, "", err
	}
	unlock, err := l.lock()
	if err != nil {
		return false, "", err
	}
	defer unlock()
	if err := l.checkStopped(); err != nil {
		return false, "", err
	}
	cd, err := u.controlData(ctx, l)
	if err != nil {
		return false, "", err
	}
	return u.crashRecover(ctx, l, cd)
}

func (u *osUser) crashRecover(ctx context.Context, l Local, cd ControlData) (bool, string, error) {
	switch cd.State {
	case StateShutDown, StateShutDownInRecovery:
		return false, "", nil
	case StateInProduction, StateInCrashRecovery, StateShuttingDown:
	default:
		return false, "", fmt.Errorf("%w: %s is %q; start it once as a standby (standby.signal and primary_conninfo), let it reach a consistent state, stop it with `pg_ctl stop -m fast`, then retry", ErrNotCleanlyStopped, l.DataDir, cd.State)
	}
	if _, err := os.Stat(filepath.Join(l.DataDir, "backup_label")); err == nil {
		return false, "", fmt.Errorf("%w: %s is %q and has backup_label: it holds a rewind or base backup waiting to be replayed, which single-user mode would end as a primary; configure it as a standby (ConfigureStandby) and start it, or re-clone it", ErrNotCleanlyStopped, l.DataDir, cd.State)
	}
	for _, f := range []string{"standby.signal", "recovery.signal"} {
		if _, err := os.Stat(filepath.Join(l.DataDir, f)); err == nil {
			return false, "", fmt.Errorf("%w: %s is %q and has %s; remove the signal file if this was a primary (crash recovery then runs as for a primary), or start it as a standby and stop it cleanly, then retry", ErrNotCleanlyStopped, l.DataDir, cd.State, f)
		}
	}
	args := []string{"--single", "-D", l.DataDir, "-c", "log_destination=stderr"}
	if l.ConfigFile != "" {
		args = append(args, "-c", "config_file="+l.ConfigFile)
	}
	args = append(args, "template1")
	out, err := u.run(ctx, l, u.childEnv(), "postgres", args...)
	if err != nil {
		return false, out, fmt.Errorf("rejoin: crash recovery of %s in single-user mode: %w\n%s\nfix the cause shown, then retry", l.DataDir, err, tail(out, 4000))
	}
	after, err := u.controlData(ctx, l)
	if err != nil {
		return true, out, err
	}
	if after.State != StateShutDown {
		return true, out, fmt.Errorf("%w: after crash recovery in single-user mode %s is %q, not %q\n%s", ErrNotCleanlyStopped, l.DataDir, after.State, StateShutDown, tail(out, 4000))
	}
	return true, out, nil
}

// tail returns at most the last n bytes of s, cut at a line start.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[len(s)-n:]
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return "..." + s
}

// sourceConninfo is the connection string for pg_rewind and pg_basebackup: everything but the
// password, which goes through a password file.
func sourceConninfo(t pgconnect.Target) string {
	var ci pgops.Conninfo
	db := t.Database
	if db == "" {
		db = "postgres"
	}
	ci.Set("host", t.Host)
	ci.Set("port", strconv.Itoa(int(t.Port)))
	ci.Set("user", t.User)
	ci.Set("dbname", db)
	if t.SSLMode != "" {
		ci.Set("sslmode", t.SSLMode)
	}
	ci.Set("connect_timeout", strconv.Itoa(int(pgconnect.ConnectTimeout/time.Second)))
	ci.Set("application_name", appName)
	return ci.Encode()
}

// escapePgpass escapes a field of a password file line (':' and '\').
func escapePgpass(s string) string {
	return strings.NewReplacer(`\`, `\\`, `:`, `\:`).Replace(s)
}

// passfileEnv returns the environment for a program that connects to t: with the password,
// when there is one, in a temporary password file of mode 0600 owned by u (in a directory of
// mode 0700), which cleanup removes. The password is never on a command line or in the
// environment; without one, libpq's usual sources (~/.pgpass of u, certificates) apply.
func passfileEnv(u *osUser, t pgconnect.Target) (env []string, cleanup func(), err error) {
	if t.Password == "" {
		return u.childEnv(), func() {}, nil
	}
	dir, err := os.MkdirTemp("", "regent-rejoin-")
	if err != nil {
		return nil, nil, fmt.Errorf("rejoin: creating a directory for the password file: %w", err)
	}
	cleanup = func() { os.RemoveAll(dir) }
	if err := u.chown(dir); err != nil {
		cleanup()
		return nil, nil, err
	}
	path := filepath.Join(dir, "pgpass")
	line := fmt.Sprintf("%s:%d:*:%s:%s\n", escapePgpass(t.Host), t.Port, escapePgpass(t.User), escapePgpass(t.Password))
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err == nil {
		_, err = f.WriteString(line)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err == nil {
		err = u.chown(path)
	}
	if err != nil {
		cleanup()
		return nil, nil, fmt.Errorf("rejoin: writing the password file: %w", err)
	}
	return u.childEnv("PGPASSFILE=" + path), cleanup, nil
}

// rewindFailure classifies a failed pg_rewind run.
type rewindFailure int

const (
	// rewindTransient: nothing was changed and retrying may work (connection lost, source busy).
	rewindTransient rewindFailure = iota
	// rewindImpossible: nothing was changed and retrying cannot work.
	rewindImpossible
	// rewindDamaged: pg_rewind had started copying; the data directory is unusable.
	rewindDamaged
)

// impossibleRewind are pg_rewind messages (PostgreSQL 13 to 16) that mean the target can never
// be rewound from this source.
var impossibleRewind = []string{
	`target server needs to use either data checksums or "wal_log_hints = on"`,
	"could not find previous WAL record at",
	"could not read WAL record at",
	"could not find common ancestor of the source and target cluster's timelines",
	"WAL record modifies a relation, but record type is not recognized",
}

// classifyRewind decides what a failed pg_rewind's output means, and returns the line that
// says why.
func classifyRewind(out string) (rewindFailure, string) {
	reason := ""
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "error:") || strings.Contains(line, "fatal:") {
			reason = strings.TrimSpace(line)
		}
	}
	if reason == "" {
		reason = strings.TrimSpace(lastLine(out))
	}
	if strings.Contains(out, "need to copy") {
		return rewindDamaged, reason
	}
	for _, m := range impossibleRewind {
		if strings.Contains(out, m) {
			return rewindImpossible, reason
		}
	}
	// Reading the target's own WAL back to the last common checkpoint: a missing segment.
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "could not open file") && strings.Contains(line, "pg_wal") {
			return rewindImpossible, reason
		}
	}
	return rewindTransient, reason
}

// Rewind makes the stopped old primary l a copy of source's history, ready to be configured as
// its standby (ConfigureStandby) and started:
//
//  1. refuses (ErrRunning) while any postgres process uses the data directory, and holds a lock
//     beside it (ErrBusy) so that two calls never work on it at once;
//  2. refuses (ErrDifferentSystem) when source belongs to another cluster;
//  3. returns at once (Result.Resumed) when an earlier call already synchronised the data
//     directory: it holds pg_rewind's backup_label, or a finished base backup
//     (backup_label and backup_manifest). An unfinished base backup, or an empty or missing
//     data directory (an interrupted re-clone), is ErrTargetDamaged: re-cloned if allowed;
//  4. when the server was killed, finishes its crash recovery in single-user mode, where it
//     cannot accept a connection (CompleteCrashRecovery) — pg_rewind needs a clean shutdown;
//  5. runs CHECKPOINT on source, so that its control file shows its new timeline (pg_rewind
//     reads it; a promotion does not wait for its checkpoint), and refuses (ErrSameTimeline)
//     when the source is still not on a later timeline than the node;
//  6. runs `pg_rewind --target-pgdata=DataDir --source-server=CONNINFO --no-ensure-shutdown`,
//     the password in a temporary password file (PGPASSFILE), never on the command line;
//  7. puts back the node's own configuration files and removes its replication slots (see
//     RewindOptions).
//
// When pg_rewind cannot work (ErrRewindImpossible: no data checksums and wal_log_hints off, the
// node's WAL since the last common checkpoint missing, no common timeline) or failed after it
// had started copying (ErrTargetDamaged), Rewind re-clones (see Reclone) if opts.AllowReclone,
// else returns that error. Any other pg_rewind failure (the source unreachable, say) left the
// data directory as it was: fix the cause and call Rewind again.
//
// The source role needs superuser (a non-superuser needs the EXECUTE grants the pg_rewind
// documentation lists, plus pg_checkpoint; this is not tested) and, for a re-clone,
// REPLICATION.
// Cancelling ctx while pg_rewind copies leaves the data directory damaged: re-clone it then.
func Rewind(ctx context.Context, l Local, source pgconnect.Target, opts RewindOptions) (res Result, err error) {
	started := time.Now()
	defer func() { res.Timings.Total = time.Since(started) }()
	if err := l.validate(); err != nil {
		return res, err
	}
	if err := source.Validate(); err != nil {
		return res, fmt.Errorf("rejoin: rewinding %s: %w", l.DataDir, err)
	}
	log := opts.logger().With("data_dir", l.DataDir, "source", source)
	u, err := l.resolveUser()
	if err != nil {
		return res, err
	}
	unlock, err := l.lock()
	if err != nil {
		return res, err
	}
	defer unlock()
	if err := l.checkStopped(); err != nil {
		return res, err
	}
	// fallBack re-clones when allowed, else returns cause.
	// saved are the node's configuration files, read before pg_rewind could overwrite them;
	// nil when there is nothing of the node's own left to keep.
	fallBack := func(cause error, reason, detail string, saved map[string]savedFile) (Result, error) {
		if !opts.AllowReclone {
			return res, fmt.Errorf("%w; re-clone %s from %s (Reclone, or Rewind with AllowReclone)%s", cause, l.DataDir, source, detail)
		}
		res.RewindImpossible = reason
		log.Warn("rejoin: pg_rewind cannot be used, re-cloning", "reason", reason)
		t := time.Now()
		err := u.reclone(ctx, l, source, opts, saved, &res)
		res.Timings.Reclone = time.Since(t)
		if err != nil {
			return res, fmt.Errorf("rejoin: re-clone after %w: %w", cause, err)
		}
		res.Method = MethodReclone
		return res, nil
	}
	if ents, err := os.ReadDir(l.DataDir); errors.Is(err, fs.ErrNotExist) || err == nil && len(ents) == 0 {
		reason := "the data directory is empty or missing (an interrupted re-clone?)"
		return fallBack(fmt.Errorf("%w: %s", ErrTargetDamaged, reason), reason, "", nil)
	}
	cd, err := u.controlData(ctx, l)
	if err != nil {
		return res, err
	}
	if err := checkSameSystem(ctx, source, l, cd); err != nil {
		return res, err
	}
	// A backup_label means an earlier call got as far as a finished pg_rewind or pg_basebackup
	// (or one was cut short): the data directory waits to be replayed as a standby.
	if label, err := os.ReadFile(filepath.Join(l.DataDir, "backup_label")); err == nil {
		_, manifestErr := os.Stat(filepath.Join(l.DataDir, "backup_manifest"))
		switch {
		case strings.Contains(string(label), "BACKUP METHOD: pg_rewind"):
			res.Method, res.Resumed = MethodRewind, true
		case manifestErr == nil:
			res.Method, res.Resumed = MethodReclone, true
		default:
			reason := "the data directory holds an unfinished base backup (backup_label without backup_manifest)"
			return fallBack(fmt.Errorf("%w: %s", ErrTargetDamaged, reason), reason, "", nil)
		}
		log.Info("rejoin: already synchronised by an earlier call", "method", res.Method)
		if res.Method == MethodRewind && !opts.KeepSlots {
			if res.RemovedSlots, err = removeSlots(l.DataDir); err != nil {
				return res, err
			}
		}
		return res, nil
	}

	t := time.Now()
	ran, out, err := u.crashRecover(ctx, l, cd)
	res.CrashRecovered, res.CrashRecoveryLog = ran, out
	if ran {
		res.Timings.CrashRecovery = time.Since(t)
		log.Info("rejoin: crash recovery finished in single-user mode", "took", res.Timings.CrashRecovery)
	}
	if err != nil {
		return res, err
	}
	if ran {
		if cd, err = u.controlData(ctx, l); err != nil {
			return res, err
		}
	}

	t = time.Now()
	srcTLI, err := checkpointSource(ctx, source)
	res.Timings.Checkpoint = time.Since(t)
	if err != nil {
		return res, err
	}
	res.SourceTimeline = srcTLI
	if srcTLI <= cd.Timeline {
		return res, fmt.Errorf("%w: after a CHECKPOINT, %s is on timeline %d and %s on timeline %d; rewind only from a server promoted after this one's timeline began", ErrSameTimeline, source, srcTLI, l.DataDir, cd.Timeline)
	}

	var saved map[string]savedFile
	if !opts.SourceConfig {
		if saved, err = saveConfig(l.DataDir); err != nil {
			return res, err
		}
	}

	env, cleanup, err := passfileEnv(u, source)
	if err != nil {
		return res, err
	}
	t = time.Now()
	log.Info("rejoin: running pg_rewind")
	out, err = u.run(ctx, l, env, "pg_rewind", "--target-pgdata="+l.DataDir, "--source-server="+sourceConninfo(source), "--no-ensure-shutdown")
	cleanup()
	res.Timings.Rewind = time.Since(t)
	res.RewindLog = tail(out, 8000)
	if err == nil {
		res.Method = MethodRewind
		if strings.Contains(out, "no rewind required") {
			res.Method = MethodNone
		}
		log.Info("rejoin: pg_rewind finished", "method", res.Method, "took", res.Timings.Rewind)
		if err := restoreConfig(u, l.DataDir, saved); err != nil {
			return res, err
		}
		if !opts.KeepSlots {
			if res.RemovedSlots, err = removeSlots(l.DataDir); err != nil {
				return res, err
			}
		}
		return res, nil
	}

	kind, reason := classifyRewind(out)
	if ctx.Err() != nil {
		if kind == rewindDamaged {
			return res, fmt.Errorf("%w: pg_rewind was interrupted (%w) while copying; re-clone %s (Reclone)", ErrTargetDamaged, ctx.Err(), l.DataDir)
		}
		return res, fmt.Errorf("rejoin: pg_rewind of %s was interrupted before it changed anything: %w", l.DataDir, ctx.Err())
	}
	switch kind {
	case rewindImpossible:
		return fallBack(fmt.Errorf("%w: %s", ErrRewindImpossible, reason), reason, "\n"+tail(out, 2000), saved)
	case rewindDamaged:
		return fallBack(fmt.Errorf("%w: %s", ErrTargetDamaged, reason), reason, "\n"+tail(out, 2000), saved)
	}
	return res, fmt.Errorf("rejoin: pg_rewind of %s from %s failed before changing anything: %s; fix the cause and call Rewind again\n%s", l.DataDir, source, reason, tail(out, 2000))
}

// checkSameSystem refuses a source of another cluster.
func checkSameSystem(ctx context.Context, source pgconnect.Target, l Local, cd ControlData) error {
	c, err := pgconnect.Connect(ctx, source, appName)
	if err != nil {
		return fmt.Errorf("rejoin: connecting to the source %s: %w; retry once it answers", source, err)
	}
	defer pgconnect.Close(c)
	id, err := systemIdentifier(ctx, c)
	if err != nil {
		return fmt.Errorf("rejoin: reading the system identifier of %s: %w", source, err)
	}
	if id != cd.SystemIdentifier {
		return fmt.Errorf("%w: %s has system identifier %d, %s has %d; nothing was changed — check which server is the source", ErrDifferentSystem, source, id, l.DataDir, cd.SystemIdentifier)
	}
	return nil
}

// checkpointSource runs CHECKPOINT on the source and returns the timeline its control file
// then shows.
func checkpointSource(ctx context.Context, source pgconnect.Target) (uint32, error) {
	c, err := pgconnect.Connect(ctx, source, appName)
	if err != nil {
		return 0, fmt.Errorf("rejoin: connecting to the source %s for a CHECKPOINT: %w; retry once it answers", source, err)
	}
	defer pgconnect.Close(c)
	if _, err := c.Exec(ctx, "CHECKPOINT"); err != nil {
		return 0, fmt.Errorf("rejoin: CHECKPOINT on the source %s: %w; the role needs superuser or pg_checkpoint", source, err)
	}
	var tli int64
	if err := c.QueryRow(ctx, "SELECT timeline_id FROM pg_control_checkpoint()").Scan(&tli); err != nil {
		return 0, fmt.Errorf("rejoin: reading the checkpoint timeline of %s: %w", source, err)
	}
	return uint32(tli), nil
}

// removeSlots removes every replication slot in dataDir/pg_replslot (the server is stopped).
func removeSlots(dataDir string) ([]string, error) {
	dir := filepath.Join(dataDir, "pg_replslot")
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("rejoin: listing replication slots in %s: %w", dir, err)
	}
	var removed []string
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return removed, fmt.Errorf("rejoin: removing replication slot %s: %w; remove %s by hand before starting the server", e.Name(), err, filepath.Join(dir, e.Name()))
		}
		removed = append(removed, e.Name())
	}
	if len(removed) > 0 {
		if err := syncDir(dir); err != nil {
			return removed, err
		}
	}
	return removed, nil
}

// Reclone replaces the stopped node's data directory with a fresh copy of source made with
// `pg_basebackup -D DataDir -X stream --checkpoint=fast`, for when a rewind is impossible.
//
// Before touching anything it checks that the server is stopped (ErrRunning), that source is
// the same cluster when the old control file is readable (ErrDifferentSystem), that the data
// directory has no tablespaces (a clone would need --tablespace-mapping: do it by hand), and
// that source accepts the role with superuser or REPLICATION. Then it renames the data
// directory to DataDir.regent-aside-<UTC time> (Result.AsideDir: kept, delete it yourself),
// creates an empty DataDir of mode 0700 for the cluster's user and clones into it, the password
// in a temporary password file. The node's own configuration files are put back unless
// opts.SourceConfig. A pg_wal symlink is not reproduced: the clone's WAL is inside DataDir.
//
// DataDir may also be missing or empty (a previous Reclone that failed): it is cloned into
// directly. A failed pg_basebackup empties DataDir again; call Reclone again once the cause is
// fixed. The file system needs room for the aside copy and the clone.
func Reclone(ctx context.Context, l Local, source pgconnect.Target, opts RewindOptions) (res Result, err error) {
	started := time.Now()
	defer func() { res.Timings.Total = time.Since(started) }()
	if err := l.validate(); err != nil {
		return res, err
	}
	if err := source.Validate(); err != nil {
		return res, fmt.Errorf("rejoin: re-cloning %s: %w", l.DataDir, err)
	}
	u, err := l.resolveUser()
	if err != nil {
		return res, err
	}
	unlock, err := l.lock()
	if err != nil {
		return res, err
	}
	defer unlock()
	if err := l.checkStopped(); err != nil {
		return res, err
	}
	if _, err := os.Stat(filepath.Join(l.DataDir, "global", "pg_control")); err == nil {
		cd, err := u.controlData(ctx, l)
		if err != nil {
			return res, fmt.Errorf("%w; move the data directory aside by hand if it is beyond repair", err)
		}
		if err := checkSameSystem(ctx, source, l, cd); err != nil {
			return res, err
		}
	}
	var saved map[string]savedFile
	if !opts.SourceConfig {
		if saved, err = saveConfig(l.DataDir); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return res, err
		}
	}
	t := time.Now()
	err = u.reclone(ctx, l, source, opts, saved, &res)
	res.Timings.Reclone = time.Since(t)
	if err != nil {
		return res, err
	}
	res.Method = MethodReclone
	return res, nil
}

// reclone does Reclone's work; the caller holds the lock and has checked the server is stopped.
func (u *osUser) reclone(ctx context.Context, l Local, source pgconnect.Target, opts RewindOptions, saved map[string]savedFile, res *Result) error {
	log := opts.logger().With("data_dir", l.DataDir, "source", source)
	if fi, err := os.Lstat(l.DataDir); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("rejoin: %s is a symbolic link; a re-clone would replace the link, not what it points to: set DataDir to the real path, or re-clone by hand", l.DataDir)
	}
	if ents, err := os.ReadDir(filepath.Join(l.DataDir, "pg_tblspc")); err == nil && len(ents) > 0 {
		return fmt.Errorf("rejoin: %s has %d tablespace(s) in pg_tblspc; a re-clone must map them (pg_basebackup --tablespace-mapping): re-clone this node by hand", l.DataDir, len(ents))
	}
	if err := checkReplicationRole(ctx, source); err != nil {
		return err
	}
	entries, err := os.ReadDir(l.DataDir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := os.Mkdir(l.DataDir, 0o700); err != nil {
			return fmt.Errorf("rejoin: creating %s: %w", l.DataDir, err)
		}
	case err != nil:
		return fmt.Errorf("rejoin: reading %s: %w", l.DataDir, err)
	case len(entries) > 0:
		aside := l.DataDir + ".regent-aside-" + time.Now().UTC().Format("20060102T150405Z")
		for i := 2; ; i++ {
			if _, err := os.Lstat(aside); errors.Is(err, fs.ErrNotExist) {
				break
			}
			aside = fmt.Sprintf("%s.regent-aside-%s-%d", l.DataDir, time.Now().UTC().Format("20060102T150405Z"), i)
		}
		if err := os.Rename(l.DataDir, aside); err != nil {
			return fmt.Errorf("rejoin: moving %s aside to %s: %w; if the data directory is a mount point, empty it by hand and call Reclone again", l.DataDir, aside, err)
		}
		res.AsideDir = aside
		log.Warn("rejoin: old data directory moved aside", "aside", aside)
		if err := os.Mkdir(l.DataDir, 0o700); err != nil {
			return fmt.Errorf("rejoin: creating %s (the old one is at %s): %w", l.DataDir, aside, err)
		}
		if err := syncDir(filepath.Dir(l.DataDir)); err != nil {
			return err
		}
	}
	if err := os.Chmod(l.DataDir, 0o700); err != nil {
		return fmt.Errorf("rejoin: %s: %w", l.DataDir, err)
	}
	if err := u.chown(l.DataDir); err != nil {
		return err
	}
	env, cleanup, err := passfileEnv(u, source)
	if err != nil {
		return err
	}
	defer cleanup()
	log.Info("rejoin: running pg_basebackup")
	out, err := u.run(ctx, l, env, "pg_basebackup", "-D", l.DataDir, "-d", sourceConninfo(source),
		"-X", "stream", "--checkpoint=fast", "-w", "--label=regent rejoin")
	if err != nil {
		where := ""
		if res.AsideDir != "" {
			where = "; the old data directory is at " + res.AsideDir
		}
		return fmt.Errorf("rejoin: pg_basebackup from %s into %s: %w\n%s\n%s is left empty%s; fix the cause and call Reclone again", source, l.DataDir, err, tail(out, 2000), l.DataDir, where)
	}
	return restoreConfig(u, l.DataDir, saved)
}

// checkReplicationRole checks that source accepts the role for a base backup.
func checkReplicationRole(ctx context.Context, source pgconnect.Target) error {
	c, err := pgconnect.Connect(ctx, source, appName)
	if err != nil {
		return fmt.Errorf("rejoin: connecting to the source %s before re-cloning: %w; nothing was changed, retry once it answers", source, err)
	}
	defer pgconnect.Close(c)
	var ok bool
	if err := c.QueryRow(ctx, "SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user").Scan(&ok); err != nil {
		return fmt.Errorf("rejoin: checking the role's rights on %s: %w", source, err)
	}
	if !ok {
		return fmt.Errorf("rejoin: role %q on %s has neither SUPERUSER nor REPLICATION, which pg_basebackup needs; nothing was changed", source.User, source)
	}
	return nil
}
