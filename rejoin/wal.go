package rejoin

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/regentdb/regent/internal/pglsn"
)

// ControlData is what ReadControlData takes from pg_controldata.
type ControlData struct {
	// SystemIdentifier is the cluster's identity; a primary and every standby cloned from it
	// share it.
	SystemIdentifier uint64
	// State is "Database cluster state": "shut down", "shut down in recovery", "shutting down",
	// "in crash recovery", "in archive recovery", "in production" or "starting up". A server
	// killed while running as a primary says "in production".
	State string
	// CheckpointLSN and RedoLSN are the latest checkpoint's record and its REDO point, where
	// crash recovery starts; Timeline is that checkpoint's timeline.
	CheckpointLSN, RedoLSN uint64
	Timeline               uint32
	// WALBlockSize, WALSegmentSize and MaxAlign describe the WAL layout (usually 8192,
	// 16 MiB and 8).
	WALBlockSize, WALSegmentSize, MaxAlign uint64
	// DataChecksums and WALLogHints are the settings pg_rewind needs one of.
	DataChecksums, WALLogHints bool
}

// Cluster states of pg_controldata that ReadControlData callers test for.
const (
	StateShutDown           = "shut down"
	StateShutDownInRecovery = "shut down in recovery"
	StateInProduction       = "in production"
	StateInCrashRecovery    = "in crash recovery"
	StateShuttingDown       = "shutting down"
	StateInArchiveRecovery  = "in archive recovery"
)

// ReadControlData runs pg_controldata on the data directory. It fails when the control file's
// checksum is wrong (pg_controldata then only warns).
func ReadControlData(ctx context.Context, l Local) (ControlData, error) {
	if err := l.validate(); err != nil {
		return ControlData{}, err
	}
	u, err := l.resolveUser()
	if err != nil {
		return ControlData{}, err
	}
	return u.controlData(ctx, l)
}

func (u *osUser) controlData(ctx context.Context, l Local) (ControlData, error) {
	out, err := u.run(ctx, l, u.childEnv(), "pg_controldata", "-D", l.DataDir)
	if err != nil {
		return ControlData{}, fmt.Errorf("rejoin: reading the control file of %s: %w\n%s\ncheck that DataDir is a PostgreSQL data directory and BinDir matches its version", l.DataDir, err, out)
	}
	cd, err := parseControlData(out)
	if err != nil {
		return ControlData{}, fmt.Errorf("rejoin: control file of %s: %w", l.DataDir, err)
	}
	return cd, nil
}

// parseControlData reads pg_controldata's output (in the C locale).
func parseControlData(out string) (ControlData, error) {
	if strings.Contains(out, "calculated CRC checksum does not match") {
		return ControlData{}, fmt.Errorf("%w: pg_controldata reports a bad checksum; the control file is damaged or from another PostgreSQL version", ErrControlFile)
	}
	kv := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		kv[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	var cd ControlData
	var errs []error
	num := func(key string, bits int) uint64 {
		n, err := strconv.ParseUint(kv[key], 10, bits)
		if err != nil {
			errs = append(errs, fmt.Errorf("%q: %w", key, err))
		}
		return n
	}
	lsn := func(key string) uint64 {
		n, err := pglsn.Parse(kv[key])
		if err != nil {
			errs = append(errs, fmt.Errorf("%q: %w", key, err))
		}
		return n
	}
	cd.SystemIdentifier = num("Database system identifier", 64)
	cd.State = kv["Database cluster state"]
	if cd.State == "" {
		errs = append(errs, errors.New(`"Database cluster state" is missing`))
	}
	cd.CheckpointLSN = lsn("Latest checkpoint location")
	cd.RedoLSN = lsn("Latest checkpoint's REDO location")
	cd.Timeline = uint32(num("Latest checkpoint's TimeLineID", 32))
	cd.WALBlockSize = num("WAL block size", 32)
	cd.WALSegmentSize = num("Bytes per WAL segment", 32)
	cd.MaxAlign = num("Maximum data alignment", 32)
	cd.DataChecksums = kv["Data page checksum version"] != "" && kv["Data page checksum version"] != "0"
	cd.WALLogHints = kv["wal_log_hints setting"] == "on"
	if len(errs) > 0 {
		return ControlData{}, fmt.Errorf("%w: unexpected pg_controldata output: %w", ErrControlFile, errors.Join(errs...))
	}
	l := cd.layout()
	if err := l.check(); err != nil {
		return ControlData{}, fmt.Errorf("%w: %w", ErrControlFile, err)
	}
	return cd, nil
}

// walLayout is what is needed to walk WAL pages.
type walLayout struct {
	blockSize, segSize, align uint64
}

func (cd ControlData) layout() walLayout {
	return walLayout{blockSize: cd.WALBlockSize, segSize: cd.WALSegmentSize, align: cd.MaxAlign}
}

func pow2(n uint64) bool { return n != 0 && n&(n-1) == 0 }

func (w walLayout) check() error {
	if !pow2(w.blockSize) || w.blockSize < 1024 || !pow2(w.segSize) || w.segSize < w.blockSize || !pow2(w.align) || w.align > 64 {
		return fmt.Errorf("implausible WAL layout: block %d, segment %d, alignment %d", w.blockSize, w.segSize, w.align)
	}
	return nil
}

// Page header sizes before alignment: XLogPageHeaderData (magic, info, timeline, page address,
// remaining length of a continued record) and XLogLongPageHeaderData, which adds the system
// identifier, the segment size and the block size on the first page of each segment.
const (
	shortPageHeader = 2 + 2 + 4 + 8 + 4
	longPageHeader  = shortPageHeader + 8 + 4 + 4
)

func (w walLayout) alignUp(n uint64) uint64 { return (n + w.align - 1) &^ (w.align - 1) }

// headerSize is the size of the page header at page start p.
func (w walLayout) headerSize(p uint64) uint64 {
	if p%w.segSize == 0 {
		return w.alignUp(longPageHeader)
	}
	return w.alignUp(shortPageHeader)
}

// recordEnd is where the record that starts at lsn with total length tot ends, as PostgreSQL
// counts it (the reader's EndRecPtr): its last byte plus one, rounded up to the alignment. The
// record's bytes fill the rest of its page, then continue after the header of each following
// page. The end of a record that fills its last page exactly is that page's boundary; the next
// record starts after the next page's header.
func (w walLayout) recordEnd(lsn, tot uint64) uint64 {
	pos, rem := lsn, tot
	for {
		pageEnd := (pos/w.blockSize + 1) * w.blockSize
		if rem <= pageEnd-pos {
			return w.alignUp(pos + rem)
		}
		rem -= pageEnd - pos
		pos = pageEnd + w.headerSize(pageEnd)
	}
}

// nextRecordStart is where a record following one that ended at end starts: end itself, or
// after the page header when end is a page boundary.
func (w walLayout) nextRecordStart(end uint64) uint64 {
	if end%w.blockSize == 0 {
		return end + w.headerSize(end)
	}
	return end
}

// walRecord is one line of pg_waldump's output.
type walRecord struct {
	rmgr   string
	totLen uint64
	xid    uint64
	lsn    uint64
	desc   string
}

// recordRE matches a pg_waldump record line (PostgreSQL 10 to 16), e.g.
// "rmgr: Transaction len (rec/tot):     34/    34, tx:        725, lsn: 0/015167A8, prev 0/01516768, desc: COMMIT 2026-11-26 11:05:14.634328 UTC".
var recordRE = regexp.MustCompile(`^rmgr: (\S+)\s+len \(rec/tot\):\s*(\d+)/\s*(\d+), tx:\s*(\d+), lsn: ([0-9A-Fa-f]+/[0-9A-Fa-f]+), prev [0-9A-Fa-f]+/[0-9A-Fa-f]+, desc: ?(.*)$`)

func parseRecord(line []byte) (walRecord, error) {
	m := recordRE.FindSubmatch(line)
	if m == nil {
		return walRecord{}, fmt.Errorf("unexpected pg_waldump line %q", truncate(string(line), 200))
	}
	tot, err := strconv.ParseUint(string(m[3]), 10, 32)
	if err != nil {
		return walRecord{}, fmt.Errorf("pg_waldump line %q: %w", truncate(string(line), 200), err)
	}
	xid, err := strconv.ParseUint(string(m[4]), 10, 32)
	if err != nil {
		return walRecord{}, fmt.Errorf("pg_waldump line %q: %w", truncate(string(line), 200), err)
	}
	lsn, err := pglsn.Parse(string(m[5]))
	if err != nil {
		return walRecord{}, fmt.Errorf("pg_waldump line %q: %w", truncate(string(line), 200), err)
	}
	return walRecord{rmgr: string(m[1]), totLen: tot, xid: xid, lsn: lsn, desc: string(m[6])}, nil
}

// end is where rec ends, with an XLOG_SWITCH record taken to the end of its segment (the rest
// of which is never used).
func (w walLayout) end(rec walRecord) uint64 {
	e := w.recordEnd(rec.lsn, rec.totLen)
	if rec.rmgr == "XLOG" && strings.HasPrefix(rec.desc, "SWITCH") && e%w.segSize != 0 {
		e = (e/w.segSize + 1) * w.segSize
	}
	return e
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// segFile is a WAL segment file in pg_wal.
type segFile struct {
	name  string
	tli   uint32
	segno uint64
}

// listSegments returns the WAL segment files in dir (names of 24 hex digits; .partial files
// and history files are left out).
func listSegments(dir string, segSize uint64) ([]segFile, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	perID := uint64(1<<32) / segSize
	var segs []segFile
	for _, e := range entries {
		n := e.Name()
		if len(n) != 24 || !e.Type().IsRegular() && e.Type()&os.ModeSymlink == 0 {
			continue
		}
		tli, err1 := strconv.ParseUint(n[0:8], 16, 32)
		log, err2 := strconv.ParseUint(n[8:16], 16, 32)
		seg, err3 := strconv.ParseUint(n[16:24], 16, 32)
		if err1 != nil || err2 != nil || err3 != nil || seg >= perID || tli == 0 {
			continue
		}
		segs = append(segs, segFile{name: n, tli: uint32(tli), segno: log*perID + seg})
	}
	return segs, nil
}

// plausibleSegment reads the first page header of a segment file and reports whether it was
// written for that position on that timeline or an ancestor: the segment in which a timeline
// began (a promotion, or an end of recovery, mid-segment) is a copy of the old timeline's
// segment up to the switch, so its first pages carry the old timeline's ID. Recycled segment
// files (old segments renamed ahead for reuse) still hold their old header, with another
// position, and are skipped without running pg_waldump on them. This is only a shortcut:
// pg_waldump validates what it reads.
func plausibleSegment(path string, s segFile, segSize uint64) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	var h [longPageHeader]byte
	if _, err := f.ReadAt(h[:], 0); err != nil {
		return false
	}
	tli := binary.NativeEndian.Uint32(h[4:8])
	addr := binary.NativeEndian.Uint64(h[8:16])
	return tli != 0 && tli <= s.tli && addr == s.segno*segSize
}

// FinalLSN returns the end of the WAL that the stopped (or killed) server wrote to its pg_wal:
// the end of its last valid record, as crash recovery would find it, and the timeline it is on.
//
// How: pg_controldata gives the latest checkpoint's REDO point (WAL before it is never needed
// and may be gone), the WAL layout and the timeline. The segment files in pg_wal at or after
// the REDO point are tried newest first (highest segment, then highest timeline, skipping
// recycled files whose header names another position); pg_waldump reads from the start of the
// first one that holds a valid record until it meets an invalid one, exactly as crash recovery
// does (they share PostgreSQL's WAL reader), so at most a segment or two is read. The end is
// computed from the last record's position and length and the page layout, which is the
// position where recovery reports "invalid record length at X" (or a similar message), that is
// where the server would write next.
//
// Exact, and what it is not: it is the WAL present in the files. WAL the server had in memory
// only (never written out, which includes no acknowledged commit with synchronous_commit on)
// is not there; after an operating-system crash, WAL written but not yet flushed may be gone
// too. A record cut short by the crash is not counted. Call it before anything starts the
// server: crash recovery and a restart write checkpoint records of their own (no transaction
// commits) that move the end further. It fails with ErrRunning while the server runs (its end
// would be a moving target) and ErrBusy while another operation of this package works on it.
func FinalLSN(ctx context.Context, l Local) (lsn uint64, timeline uint32, err error) {
	if err := l.validate(); err != nil {
		return 0, 0, err
	}
	u, err := l.resolveUser()
	if err != nil {
		return 0, 0, err
	}
	unlock, err := l.lockStopped()
	if err != nil {
		return 0, 0, err
	}
	defer unlock()
	cd, err := u.controlData(ctx, l)
	if err != nil {
		return 0, 0, err
	}
	e, err := u.walEnd(ctx, l, cd)
	if err != nil {
		return 0, 0, err
	}
	return e.lsn, e.tli, nil
}

// walEndResult is what walEnd found.
type walEndResult struct {
	lsn  uint64
	tli  uint32
	last walRecord
}

func (u *osUser) walEnd(ctx context.Context, l Local, cd ControlData) (walEndResult, error) {
	w := cd.layout()
	walDir := filepath.Join(l.DataDir, "pg_wal")
	segs, err := listSegments(walDir, w.segSize)
	if err != nil {
		return walEndResult{}, fmt.Errorf("rejoin: listing %s: %w", walDir, err)
	}
	redoSeg := cd.RedoLSN / w.segSize
	var cands []segFile
	for _, s := range segs {
		if s.segno >= redoSeg && s.tli >= cd.Timeline && plausibleSegment(filepath.Join(walDir, s.name), s, w.segSize) {
			cands = append(cands, s)
		}
	}
	sort.Slice(cands, func(i, j int) bool {
		if cands[i].segno != cands[j].segno {
			return cands[i].segno > cands[j].segno
		}
		return cands[i].tli > cands[j].tli
	})
	var tried []string
	for _, s := range cands {
		start := max(s.segno*w.segSize, cd.RedoLSN)
		var last []byte
		n := 0
		stderr, _, startErr := u.scanLines(ctx, l, u.childEnv(), func(line []byte) {
			if bytes.HasPrefix(line, []byte("rmgr: ")) {
				n++
				last = append(last[:0], line...)
			}
		}, "pg_waldump", "--path="+walDir, fmt.Sprintf("--timeline=%d", s.tli), "--start="+pglsn.Format(start))
		if startErr != nil {
			return walEndResult{}, fmt.Errorf("rejoin: reading the WAL of %s: %w", l.DataDir, startErr)
		}
		if n == 0 {
			tried = append(tried, fmt.Sprintf("%s: %s", s.name, strings.TrimSpace(lastLine(stderr))))
			continue
		}
		rec, err := parseRecord(last)
		if err != nil {
			return walEndResult{}, fmt.Errorf("rejoin: reading the WAL of %s: %w; is BinDir's pg_waldump the cluster's version?", l.DataDir, err)
		}
		return walEndResult{lsn: w.end(rec), tli: s.tli, last: rec}, nil
	}
	if len(tried) == 0 {
		tried = append(tried, "no segment file at or after the checkpoint's REDO point "+pglsn.Format(cd.RedoLSN))
	}
	return walEndResult{}, fmt.Errorf("%w in %s after the REDO point %s (%s); the WAL is damaged or missing: re-clone this node", ErrNoValidWAL, walDir, pglsn.Format(cd.RedoLSN), strings.Join(tried, "; "))
}

func lastLine(s string) string {
	s = strings.TrimRight(s, "\n")
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// WALSummary counts the transaction records of a stretch of WAL.
type WALSummary struct {
	// From, To and Timeline are the stretch that was read.
	From, To uint64
	Timeline uint32
	// Commits counts COMMIT records: one per top-level transaction that was assigned a
	// transaction id (wrote something) and committed; its subtransactions are part of it.
	// Read-only transactions write no record and are not counted.
	Commits int
	// CommitsPrepared counts COMMIT_PREPARED records: two-phase transactions committed by COMMIT
	// PREPARED. When their PREPARE came before the fork, the new primary still holds them as
	// prepared transactions, which a transaction manager may yet commit there.
	CommitsPrepared int
	// Prepares counts PREPARE records (PREPARE TRANSACTION): not commits.
	Prepares int
	// Aborts and AbortsPrepared count ABORT and ABORT_PREPARED records: nothing committed.
	// Aborts that were never written out (an abort is not flushed at once) are not seen.
	Aborts, AbortsPrepared int
	// FirstCommit and LastCommit are the commit times recorded in the first and last
	// COMMIT or COMMIT_PREPARED record (the old primary's clock); zero when there is none.
	FirstCommit, LastCommit time.Time
	// Excluded counts the COMMIT records (among Commits) of transactions that wrote only
	// excluded relations (ScanOptions.Exclude: regent's own heartbeat table), so are no
	// user's lost work. Always 0 without exclusions.
	Excluded int
}

// Lost is the number of committed transactions that were not only writes to excluded
// relations: Commits + CommitsPrepared − Excluded.
func (s WALSummary) Lost() int { return s.Commits + s.CommitsPrepared - s.Excluded }

// RelFile names a relation's storage as WAL records do ("rel 1663/5/16384"): its tablespace,
// its database and its relfilenode.
type RelFile struct {
	Tablespace, Database, RelNode uint32
}

// String writes f as pg_waldump does.
func (f RelFile) String() string { return fmt.Sprintf("%d/%d/%d", f.Tablespace, f.Database, f.RelNode) }

// ScanOptions refine ScanWAL and Measure.
type ScanOptions struct {
	// Exclude are relations whose writes are not user data (regent's heartbeat table:
	// TableRelFiles of regent.heartbeat on the new primary). A committed transaction whose records write only these is counted
	// in WALSummary.Excluded and not in Lost. A transaction whose writes were not seen at all
	// (they precede the stretch read) counts as lost: it is never excluded on a guess.
	Exclude []RelFile
	// segSize is the WAL segment size (from the control file): with exclusions the scan
	// starts up to excludeLookBehind before `from`, within from's segment, to see the writes
	// of transactions that commit after it.
	segSize uint64
}

// excludeLookBehind is how far before the fork point a scan with exclusions starts reading, so
// that a heartbeat transaction whose write precedes the fork and whose commit follows it is
// still recognised (a heartbeat transaction lasts milliseconds and writes a few hundred bytes).
const excludeLookBehind = 1 << 20

// relRE finds the relations a pg_waldump record refers to ("blkref #0: rel 1663/5/16384 blk 0").
var relRE = regexp.MustCompile(`\brel (\d+)/(\d+)/(\d+)`)

// subxactsRE finds the subtransactions a COMMIT record lists ("; subxacts: 740 741").
var subxactsRE = regexp.MustCompile(`subxacts:((?: \d+)+)`)

// xidWrites tracks, per transaction id, whether its records wrote an excluded relation or any
// other one.
type xidWrites struct {
	exclude      map[RelFile]bool
	other, onlyX map[uint64]bool
}

func newXidWrites(exclude []RelFile) *xidWrites {
	w := &xidWrites{exclude: map[RelFile]bool{}, other: map[uint64]bool{}, onlyX: map[uint64]bool{}}
	for _, f := range exclude {
		w.exclude[f] = true
	}
	return w
}

// add notes the relations rec refers to under its transaction id.
func (w *xidWrites) add(rec walRecord) {
	if rec.xid == 0 {
		return
	}
	for _, m := range relRE.FindAllStringSubmatch(rec.desc, -1) {
		var f RelFile
		for i, p := range []*uint32{&f.Tablespace, &f.Database, &f.RelNode} {
			n, err := strconv.ParseUint(m[i+1], 10, 32)
			if err != nil {
				w.other[rec.xid] = true // unreadable: never exclude on a guess
				return
			}
			*p = uint32(n)
		}
		if w.exclude[f] {
			w.onlyX[rec.xid] = true
		} else {
			w.other[rec.xid] = true
		}
	}
}

// excluded reports whether the COMMIT record rec ends a transaction (with its
// subtransactions) that wrote excluded relations and nothing else.
func (w *xidWrites) excluded(rec walRecord) bool {
	xids := []uint64{rec.xid}
	if m := subxactsRE.FindStringSubmatch(rec.desc); m != nil {
		for _, f := range strings.Fields(m[1]) {
			if n, err := strconv.ParseUint(f, 10, 32); err == nil {
				xids = append(xids, n)
			}
		}
	}
	seen := false
	for _, x := range xids {
		if w.other[x] {
			return false
		}
		seen = seen || w.onlyX[x]
	}
	return seen
}

// commitTimeRE finds the commit timestamp pg_waldump prints (in UTC: childEnv sets TZ).
var commitTimeRE = regexp.MustCompile(`(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:\.\d+)?) UTC`)

// ScanWAL reads the old primary's WAL from `from` to `to` on timeline (with pg_waldump
// --start --end --timeline --rmgr=Transaction) and counts its transaction records. Call it
// before rewinding: pg_rewind replaces that WAL. from is usually the fork point and to the
// final LSN; from at or after to gives an empty summary.
//
// Errors: ErrWALMissing (wrapped) when a segment in the range is no longer in pg_wal (removed
// after a checkpoint, e.g. archived): the count would be short, so none is given. ErrRunning
// and ErrBusy as for FinalLSN.
func ScanWAL(ctx context.Context, l Local, from, to uint64, timeline uint32) (WALSummary, error) {
	return ScanWALWith(ctx, l, from, to, timeline, ScanOptions{})
}

// ScanWALWith is ScanWAL with options: with ScanOptions.Exclude it reads every record (not only
// the transaction records), from a little before `from`, to tell which committed transactions
// wrote only excluded relations (WALSummary.Excluded).
func ScanWALWith(ctx context.Context, l Local, from, to uint64, timeline uint32, opts ScanOptions) (WALSummary, error) {
	if from >= to {
		return WALSummary{From: from, To: to, Timeline: timeline}, nil
	}
	if err := l.validate(); err != nil {
		return WALSummary{}, err
	}
	u, err := l.resolveUser()
	if err != nil {
		return WALSummary{}, err
	}
	unlock, err := l.lockStopped()
	if err != nil {
		return WALSummary{}, err
	}
	defer unlock()
	if len(opts.Exclude) > 0 && opts.segSize == 0 {
		cd, err := u.controlData(ctx, l)
		if err != nil {
			return WALSummary{}, err
		}
		opts.segSize = cd.WALSegmentSize
	}
	return u.scanWAL(ctx, l, from, to, timeline, opts)
}

func (u *osUser) scanWAL(ctx context.Context, l Local, from, to uint64, timeline uint32, opts ScanOptions) (WALSummary, error) {
	sum := WALSummary{From: from, To: to, Timeline: timeline}
	if from >= to {
		return sum, nil
	}
	if timeline == 0 {
		return sum, errors.New("rejoin: ScanWAL needs the timeline (FinalLSN returns it)")
	}
	walDir := filepath.Join(l.DataDir, "pg_wal")
	start, filter := from, []string{"--rmgr=Transaction"}
	var writes *xidWrites
	if len(opts.Exclude) > 0 {
		writes, filter = newXidWrites(opts.Exclude), nil
		if opts.segSize > 0 {
			start = max(from/opts.segSize*opts.segSize, from-min(from, excludeLookBehind))
		}
	}
	var parseErr error
	stderr, exitErr, startErr := u.scanLines(ctx, l, u.childEnv(), func(line []byte) {
		if parseErr != nil || !bytes.HasPrefix(line, []byte("rmgr: ")) {
			return
		}
		rec, err := parseRecord(line)
		if err != nil {
			parseErr = err
			return
		}
		if writes != nil {
			writes.add(rec)
		}
		if rec.rmgr != "Transaction" || rec.lsn < from {
			return
		}
		kind, _, _ := strings.Cut(rec.desc, " ")
		switch kind {
		case "COMMIT", "COMMIT_PREPARED":
			if kind == "COMMIT" {
				sum.Commits++
				if writes != nil && writes.excluded(rec) {
					sum.Excluded++
				}
			} else {
				sum.CommitsPrepared++
			}
			if m := commitTimeRE.FindStringSubmatch(rec.desc); m != nil {
				if t, err := time.Parse("2006-01-02 15:04:05.999999999", m[1]); err == nil {
					if sum.FirstCommit.IsZero() {
						sum.FirstCommit = t
					}
					sum.LastCommit = t
				}
			}
		case "PREPARE":
			sum.Prepares++
		case "ABORT":
			sum.Aborts++
		case "ABORT_PREPARED":
			sum.AbortsPrepared++
		}
	}, "pg_waldump", append([]string{"--path=" + walDir, fmt.Sprintf("--timeline=%d", timeline),
		"--start=" + pglsn.Format(start), "--end=" + pglsn.Format(to)}, filter...)...)
	switch {
	case startErr != nil:
		return sum, fmt.Errorf("rejoin: reading the WAL of %s: %w", l.DataDir, startErr)
	case parseErr != nil:
		return sum, fmt.Errorf("rejoin: reading the WAL of %s: %w; is BinDir's pg_waldump the cluster's version?", l.DataDir, parseErr)
	case exitErr != nil && (strings.Contains(stderr, "could not find file") || strings.Contains(stderr, "No such file")):
		return sum, fmt.Errorf("%w: pg_waldump from %s to %s on timeline %d in %s: %s; the count of lost transactions is unknown (the byte count is still exact)",
			ErrWALMissing, pglsn.Format(from), pglsn.Format(to), timeline, walDir, strings.TrimSpace(lastLine(stderr)))
	case exitErr != nil:
		return sum, fmt.Errorf("rejoin: pg_waldump from %s to %s on timeline %d in %s failed: %w: %s; check that `to` is not beyond FinalLSN and the server has not been started since",
			pglsn.Format(from), pglsn.Format(to), timeline, walDir, exitErr, strings.TrimSpace(stderr))
	}
	return sum, nil
}

// LostTransactions returns the number of transactions the old primary committed in its WAL
// between from (the fork point) and to (its final LSN) on timeline: its COMMIT and
// COMMIT_PREPARED records (see WALSummary for what each counts; PREPARE and ABORT records are
// not commits). When from is the fork point these are exactly the commits the new primary does
// not have. See ScanWAL for the details and errors.
func LostTransactions(ctx context.Context, l Local, from, to uint64, timeline uint32) (int, error) {
	s, err := ScanWAL(ctx, l, from, to, timeline)
	if err != nil {
		return 0, err
	}
	return s.Lost(), nil
}
