package rejoin

import (
	"encoding/binary"
	"errors"
	"math"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"testing"

	"github.com/regentdb/regent/pgconnect"
	"github.com/regentdb/regent/pgops"
)

func TestDataLossBytes(t *testing.T) {
	for _, tc := range []struct {
		final, fork uint64
		want        int64
	}{
		{0x3033D68, 0x302ED58, 0x5010},
		{100, 100, 0},
		{100, 150, 0},
		{math.MaxUint64, 0, math.MaxInt64},
	} {
		if got := DataLossBytes(tc.final, tc.fork); got != tc.want {
			t.Errorf("DataLossBytes(%d, %d) = %d, want %d", tc.final, tc.fork, got, tc.want)
		}
	}
}

func TestParseHistory(t *testing.T) {
	h, err := ParseHistory("1\t0/3000148\tno recovery target specified\n\n# a comment\n  2\t0/5000000\tbefore 2026-01-01 00:00:00+00\n")
	if err != nil {
		t.Fatal(err)
	}
	want := []TimelineSwitch{{1, 0x3000148, "no recovery target specified"}, {2, 0x5000000, "before 2026-01-01 00:00:00+00"}}
	if len(h) != len(want) {
		t.Fatalf("ParseHistory = %+v, want %+v", h, want)
	}
	for i := range want {
		if h[i] != want[i] {
			t.Errorf("line %d: %+v, want %+v", i, h[i], want[i])
		}
	}
	if lsn, err := forkIn(h, 2, 3); err != nil || lsn != 0x5000000 {
		t.Errorf("forkIn(2) = %X, %v", lsn, err)
	}
	if _, err := forkIn(h, 4, 5); !errors.Is(err, ErrNotAncestor) {
		t.Errorf("forkIn of a timeline not in the history: %v, want ErrNotAncestor", err)
	}
	if h, err := ParseHistory(""); err != nil || len(h) != 0 {
		t.Errorf("empty history: %v, %v", h, err)
	}
	for _, bad := range []string{
		"1\n",                        // no switch point
		"x\t0/1\n",                   // timeline not a number
		"0\t0/1\n",                   // timeline 0
		"1\t0/zz\n",                  // bad LSN
		"2\t0/5\tr\n1\t0/6\tr\n",     // timelines go down
		"1\t0/5\tr\n2\t0/4\tr\n",     // switch points go back
		"1\t0/5000000\n1\t0/6000000", // same timeline twice
	} {
		if _, err := ParseHistory(bad); !errors.Is(err, ErrBadHistory) {
			t.Errorf("ParseHistory(%q): %v, want ErrBadHistory", bad, err)
		}
	}
}

var layout8k = walLayout{blockSize: 8192, segSize: 16 << 20, align: 8}

func TestRecordEnd(t *testing.T) {
	w := layout8k
	for _, tc := range []struct {
		name     string
		lsn, tot uint64
		want     uint64
	}{
		{"within a page, aligned up", 0x1516B20, 42, 0x1516B50},
		{"ends exactly at the page end", 0x2000 - 64, 64, 0x2000},
		// 32 bytes on the first page, the remaining 68 after the next page's short header (24).
		{"crosses one page", 0x2000 - 32, 100, 0x2000 + 24 + 72},
		// 16 bytes, then a whole page less its header (8168), then 16 after the next header.
		{"spans three pages", 0x4000 - 16, 16 + 8168 + 16, 0x6000 + 24 + 16},
		// Into a new segment, whose first page has the long header (40).
		{"crosses into a segment", 16<<20 - 8, 20, 16<<20 + 40 + 16},
	} {
		if got := w.recordEnd(tc.lsn, tc.tot); got != tc.want {
			t.Errorf("%s: recordEnd(%X, %d) = %X, want %X", tc.name, tc.lsn, tc.tot, got, tc.want)
		}
	}
	if got := w.nextRecordStart(0x2000); got != 0x2000+24 {
		t.Errorf("nextRecordStart at a page boundary = %X", got)
	}
	if got := w.nextRecordStart(16 << 20); got != 16<<20+40 {
		t.Errorf("nextRecordStart at a segment boundary = %X", got)
	}
	if got := w.nextRecordStart(0x2008); got != 0x2008 {
		t.Errorf("nextRecordStart inside a page = %X", got)
	}
	sw := walRecord{rmgr: "XLOG", lsn: 0x3000100, totLen: 24, desc: "SWITCH "}
	if got := w.end(sw); got != 0x4000000 {
		t.Errorf("end of a WAL switch = %X, want the next segment's start", got)
	}
}

func TestParseRecord(t *testing.T) {
	r, err := parseRecord([]byte("rmgr: Transaction len (rec/tot):     46/    46, tx:        726, lsn: 0/01516850, prev 0/01516810, desc: COMMIT 2026-11-26 11:05:14.639204 UTC; subxacts: 727"))
	if err != nil {
		t.Fatal(err)
	}
	if r.rmgr != "Transaction" || r.totLen != 46 || r.xid != 726 || r.lsn != 0x1516850 || !strings.HasPrefix(r.desc, "COMMIT 2026") {
		t.Errorf("parseRecord = %+v", r)
	}
	r, err = parseRecord([]byte("rmgr: Heap        len (rec/tot):     54/  7934, tx:        735, lsn: 0/03000060, prev 0/03000028, desc: INSERT off 2 flags 0x00, blkref #0: rel 1663/5/16384 blk 0 FPW"))
	if err != nil || r.rmgr != "Heap" || r.totLen != 7934 || r.lsn != 0x3000060 {
		t.Errorf("parseRecord = %+v, %v", r, err)
	}
	if _, err := parseRecord([]byte("pg_waldump: error: error in WAL record at 0/1516B20: invalid record length")); err == nil {
		t.Error("parseRecord accepted an error line")
	}
}

const controlDataOut = `pg_control version number:            1300
Database system identifier:           7712434606068756001
Database cluster state:               in production
Latest checkpoint location:           0/1500718
Latest checkpoint's REDO location:    0/1500700
Latest checkpoint's TimeLineID:       3
wal_log_hints setting:                on
Maximum data alignment:               8
WAL block size:                       8192
Bytes per WAL segment:                16777216
Data page checksum version:           0
`

func TestParseControlData(t *testing.T) {
	cd, err := parseControlData(controlDataOut)
	if err != nil {
		t.Fatal(err)
	}
	want := ControlData{SystemIdentifier: 7712434606068756001, State: StateInProduction, CheckpointLSN: 0x1500718,
		RedoLSN: 0x1500700, Timeline: 3, WALBlockSize: 8192, WALSegmentSize: 16 << 20, MaxAlign: 8, WALLogHints: true}
	if cd != want {
		t.Errorf("parseControlData = %+v, want %+v", cd, want)
	}
	for name, out := range map[string]string{
		"bad CRC":      "WARNING: Calculated CRC checksum does not match value stored in file.\n" + strings.Replace(controlDataOut, "WARNING", "", 1) + "calculated CRC checksum does not match\n",
		"missing key":  strings.Replace(controlDataOut, "Latest checkpoint location", "Something else", 1),
		"odd segments": strings.Replace(controlDataOut, "16777216", "1000", 1),
	} {
		if _, err := parseControlData(out); !errors.Is(err, ErrControlFile) {
			t.Errorf("%s: %v, want ErrControlFile", name, err)
		}
	}
}

func TestListSegments(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{
		"000000010000000000000003", "000000020000000100000000", "00000002.history",
		"000000010000000000000004.partial", "archive_status", "0000000100000000000000ZZ", "000000000000000000000001",
	} {
		if err := os.WriteFile(filepath.Join(dir, n), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	segs, err := listSegments(dir, 16<<20)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]segFile{}
	for _, s := range segs {
		got[s.name] = s
	}
	if len(got) != 2 || got["000000010000000000000003"] != (segFile{"000000010000000000000003", 1, 3}) ||
		got["000000020000000100000000"] != (segFile{"000000020000000100000000", 2, 256}) {
		t.Errorf("listSegments = %+v", segs)
	}
}

func TestClassifyRewind(t *testing.T) {
	for _, tc := range []struct {
		out  string
		want rewindFailure
	}{
		{"pg_rewind: error: target server needs to use either data checksums or \"wal_log_hints = on\"\n", rewindImpossible},
		{"pg_rewind: servers diverged at WAL location 0/3000000 on timeline 1\npg_rewind: error: could not find previous WAL record at 0/2000060: invalid record length\n", rewindImpossible},
		{"pg_rewind: error: could not open file \"/data/pg_wal/000000010000000000000002\": No such file or directory\n", rewindImpossible},
		{"pg_rewind: error: could not connect to server: connection refused\n", rewindTransient},
		{"pg_rewind: reading source file list\npg_rewind: need to copy 53 MB (total source directory size is 70 MB)\npg_rewind: error: could not fetch remote file \"base/1/1259\": server closed the connection\n", rewindDamaged},
	} {
		got, reason := classifyRewind(tc.out)
		if got != tc.want {
			t.Errorf("classifyRewind(%q) = %d, want %d", tc.out, got, tc.want)
		}
		if !strings.Contains(reason, "error:") {
			t.Errorf("reason %q does not quote the error", reason)
		}
	}
}

func TestConninfoFor(t *testing.T) {
	ci := ConninfoFor(pgconnect.Target{Host: "db2", Port: 5433, User: "repl", Password: "s3 'cret", SSLMode: "require"}, "node1")
	if s := ci.String(); strings.Contains(s, "cret") {
		t.Errorf("String leaks the password: %s", s)
	}
	back, err := pgops.ParseConninfo(ci.Encode())
	if err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]string{"host": "db2", "port": "5433", "user": "repl", "password": "s3 'cret", "sslmode": "require", "application_name": "node1"} {
		if v, _ := back.Get(k); v != want {
			t.Errorf("%s = %q, want %q", k, v, want)
		}
	}
	if _, ok := ConninfoFor(pgconnect.Target{Host: "h", Port: 1, User: "u"}, "").Get("password"); ok {
		t.Error("an empty password is written")
	}
}

// unquoteConfValue reads a quoted configuration value as PostgreSQL's GUC scanner does.
func unquoteConfValue(t *testing.T, q string) string {
	t.Helper()
	if len(q) < 2 || q[0] != '\'' || q[len(q)-1] != '\'' {
		t.Fatalf("not quoted: %s", q)
	}
	q = q[1 : len(q)-1]
	var b strings.Builder
	for i := 0; i < len(q); i++ {
		switch {
		case q[i] == '\\' && i+1 < len(q):
			i++
			b.WriteByte(q[i])
		case q[i] == '\'' && i+1 < len(q) && q[i+1] == '\'':
			i++
			b.WriteByte('\'')
		case q[i] == '\'':
			t.Fatalf("lone quote in %s", q)
		default:
			b.WriteByte(q[i])
		}
	}
	return b.String()
}

func TestEditAutoConf(t *testing.T) {
	old := autoConfHeader + "work_mem = '64MB'\nPrimary_Conninfo = 'host=old'\n  primary_slot_name='old_slot'\nprimary_conninfo_x = 'keep'\n# primary_conninfo = 'a comment'\nrecovery_target_timeline = '2'\n"
	conninfo := `host=new password='a''b\\c'`
	got := editAutoConf(old, map[string]string{"primary_conninfo": conninfo, "recovery_target_timeline": "latest"})
	lines := strings.Split(strings.TrimSuffix(got, "\n"), "\n")
	want := []string{
		"# Do not edit this file manually!", "# It will be overwritten by the ALTER SYSTEM command.",
		"work_mem = '64MB'", "primary_conninfo_x = 'keep'", "# primary_conninfo = 'a comment'",
	}
	if len(lines) != len(want)+2 {
		t.Fatalf("editAutoConf gave:\n%s", got)
	}
	for i, w := range want {
		if lines[i] != w {
			t.Errorf("line %d = %q, want %q", i, lines[i], w)
		}
	}
	name, val, _ := strings.Cut(lines[len(want)], " = ")
	if name != "primary_conninfo" || unquoteConfValue(t, val) != conninfo {
		t.Errorf("primary_conninfo line %q does not read back as %q", lines[len(want)], conninfo)
	}
	if lines[len(want)+1] != "recovery_target_timeline = 'latest'" {
		t.Errorf("last line %q", lines[len(want)+1])
	}
	if got := editAutoConf("", map[string]string{"primary_slot_name": "s"}); got != autoConfHeader+"primary_slot_name = 's'\n" {
		t.Errorf("editAutoConf of an empty file = %q", got)
	}
	if got := editAutoConf("work_mem = 1", nil); got != "work_mem = 1\n" {
		t.Errorf("a last line without newline: %q", got)
	}
}

func TestEscapePgpass(t *testing.T) {
	if got := escapePgpass(`a:b\c`); got != `a\:b\\c` {
		t.Errorf("escapePgpass = %q", got)
	}
}

func TestPassfileEnv(t *testing.T) {
	u := &osUser{name: "me", home: "/"}
	env, cleanup, err := passfileEnv(u, pgconnect.Target{Host: "::1", Port: 5432, User: "regent", Password: `p'w\:x`})
	if err != nil {
		t.Fatal(err)
	}
	var path string
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PGPASSFILE="); ok {
			path = v
		}
		if strings.Contains(kv, "p'w") {
			t.Errorf("the password is in the environment: %s", kv)
		}
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("password file mode %v, want 0600", fi.Mode().Perm())
	}
	b, _ := os.ReadFile(path)
	if string(b) != `\:\:1:5432:*:regent:p'w\\\:x`+"\n" {
		t.Errorf("password file holds %q", b)
	}
	cleanup()
	if _, err := os.Stat(filepath.Dir(path)); !os.IsNotExist(err) {
		t.Errorf("the password file's directory survives cleanup: %v", err)
	}
	env, cleanup, err = passfileEnv(u, pgconnect.Target{Host: "h", Port: 1, User: "u"})
	if err != nil {
		t.Fatal(err)
	}
	defer cleanup()
	for _, kv := range env {
		if strings.HasPrefix(kv, "PGPASSFILE=") {
			t.Errorf("a password file without a password: %s", kv)
		}
	}
}

// fakeDataDir makes a directory that looks enough like a stopped cluster's for ConfigureStandby,
// owned by someone PostgreSQL programs may run as.
func fakeDataDir(t *testing.T) Local {
	t.Helper()
	l := Local{BinDir: "/nonexistent", DataDir: filepath.Join(t.TempDir(), "data")}
	if err := os.Mkdir(l.DataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(l.DataDir, "PG_VERSION"), []byte("15\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		if _, err := user.Lookup("nobody"); err != nil {
			t.Skip("running as root without a \"nobody\" user to own the fake data directory")
		}
		l.RunAs = "nobody"
	}
	return l
}

func TestConfigureStandby(t *testing.T) {
	l := fakeDataDir(t)
	auto := filepath.Join(l.DataDir, "postgresql.auto.conf")
	if err := os.WriteFile(auto, []byte(autoConfHeader+"work_mem = '64MB'\nprimary_conninfo = 'host=old'\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	up := ConninfoFor(pgconnect.Target{Host: "10.0.0.2", Port: 5432, User: "repl", Password: "secret-7f3a"}, "node1")
	if err := ConfigureStandby(l, up, "node1_slot"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(auto)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, want := range []string{"work_mem = '64MB'\n", "primary_conninfo = 'host=10.0.0.2 port=5432 user=repl password=secret-7f3a application_name=node1'\n",
		"primary_slot_name = 'node1_slot'\n", "recovery_target_timeline = 'latest'\n"} {
		if !strings.Contains(s, want) {
			t.Errorf("postgresql.auto.conf lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, "host=old") {
		t.Errorf("the old primary_conninfo was kept:\n%s", s)
	}
	fi, err := os.Stat(auto)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("postgresql.auto.conf mode %v, want 0600", fi.Mode().Perm())
	}
	if _, err := os.Stat(filepath.Join(l.DataDir, "standby.signal")); err != nil {
		t.Errorf("standby.signal: %v", err)
	}
	// Again without a slot: the setting goes, the rest stays.
	if err := ConfigureStandby(l, up, ""); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(auto)
	if strings.Contains(string(b), "primary_slot_name") || strings.Count(string(b), "primary_conninfo") != 1 {
		t.Errorf("second ConfigureStandby gave:\n%s", b)
	}

	for name, tc := range map[string]struct {
		up   pgops.Conninfo
		slot string
	}{
		"no host":      {pgops.Conninfo{}, ""},
		"bad slot":     {up, "Bad-Slot"},
		"long slot":    {up, strings.Repeat("s", 64)},
		"slot with ;'": {up, "a';b"},
	} {
		err := ConfigureStandby(l, tc.up, tc.slot)
		if err == nil {
			t.Errorf("%s: accepted", name)
		} else if strings.Contains(err.Error(), "secret-7f3a") {
			t.Errorf("%s: error leaks the password: %v", name, err)
		}
	}
	if err := ConfigureStandby(Local{BinDir: "/x", DataDir: filepath.Join(t.TempDir(), "none"), RunAs: l.RunAs}, up, ""); err == nil {
		t.Error("ConfigureStandby of a directory that is not a data directory succeeded")
	}
}

func TestLock(t *testing.T) {
	l := fakeDataDir(t)
	unlock, err := l.lock()
	if err != nil {
		t.Fatal(err)
	}
	if err := ConfigureStandby(l, ConninfoFor(pgconnect.Target{Host: "h", Port: 1, User: "u"}, ""), ""); !errors.Is(err, ErrBusy) {
		t.Errorf("ConfigureStandby while the lock is held: %v, want ErrBusy", err)
	}
	unlock()
	unlock2, err := l.lock()
	if err != nil {
		t.Fatalf("the lock is not released: %v", err)
	}
	unlock2()
}

func TestLocalValidate(t *testing.T) {
	for _, l := range []Local{
		{DataDir: "/d"},
		{BinDir: "/b", DataDir: "relative"},
		{BinDir: "/b", DataDir: "/d", ConfigFile: "pg.conf"},
	} {
		if err := l.validate(); err == nil {
			t.Errorf("%+v accepted", l)
		}
	}
}

func TestRunAsNotRoot(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("needs a non-root user")
	}
	if _, err := (Local{BinDir: "/b", DataDir: "/d", RunAs: "someone-else-entirely"}).resolveUser(); err == nil {
		t.Error("a non-root regent accepted to run programs as another user")
	}
}

func TestRunAsRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	dir := t.TempDir() // owned by root
	if _, err := (Local{BinDir: "/b", DataDir: dir}).resolveUser(); err == nil || !strings.Contains(err.Error(), "RunAs") {
		t.Errorf("programs would run as root for a root-owned data directory: %v", err)
	}
	if _, err := (Local{BinDir: "/b", DataDir: dir, RunAs: "root"}).resolveUser(); err == nil {
		t.Error("RunAs root accepted")
	}
	if _, err := user.Lookup("nobody"); err == nil {
		u, err := (Local{BinDir: "/b", DataDir: dir, RunAs: "nobody"}).resolveUser()
		if err != nil || !u.switchTo || u.uid == 0 {
			t.Errorf("RunAs nobody: %+v, %v", u, err)
		}
	}
}

func TestPlausibleSegment(t *testing.T) {
	dir := t.TempDir()
	seg := segFile{name: "000000020000000000000005", tli: 2, segno: 5}
	write := func(tli uint32, addr uint64) string {
		h := make([]byte, 8192)
		binary.NativeEndian.PutUint16(h[2:4], 0x0002) // XLP_LONG_HEADER
		binary.NativeEndian.PutUint32(h[4:8], tli)
		binary.NativeEndian.PutUint64(h[8:16], addr)
		p := filepath.Join(dir, seg.name)
		if err := os.WriteFile(p, h, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if !plausibleSegment(write(2, 5<<24), seg, 16<<20) {
		t.Error("a segment written for its own position is not plausible")
	}
	if plausibleSegment(write(2, 1<<24), seg, 16<<20) {
		t.Error("a recycled segment (old page address) is plausible")
	}
	if !plausibleSegment(write(1, 5<<24), seg, 16<<20) {
		t.Error("the segment where timeline 2 began (copied from timeline 1, so its first page says 1) is not plausible")
	}
	if plausibleSegment(write(3, 5<<24), seg, 16<<20) {
		t.Error("a segment whose header names a later timeline is plausible")
	}
	if err := os.WriteFile(filepath.Join(dir, seg.name), []byte{1, 2}, 0o600); err != nil {
		t.Fatal(err)
	}
	if plausibleSegment(filepath.Join(dir, seg.name), seg, 16<<20) {
		t.Error("a truncated segment is plausible")
	}
}

func TestXidWritesExcluded(t *testing.T) {
	hb, hbIdx := RelFile{1663, 5, 16386}, RelFile{1663, 5, 16391}
	w := newXidWrites([]RelFile{hb, hbIdx})
	lines := []string{
		// 735: a heartbeat (heap and index); 736: a user row; 737: both; 738+739: the user row
		// in a subtransaction; 740: a commit whose writes were not read.
		"rmgr: Heap        len (rec/tot):     72/    72, tx:        735, lsn: 0/03000060, prev 0/03000028, desc: HOT_UPDATE off 2 xmax 735 flags 0x10 ; new off 3 xmax 0, blkref #0: rel 1663/5/16386 blk 0",
		"rmgr: Btree       len (rec/tot):     64/    64, tx:        735, lsn: 0/030000A8, prev 0/03000060, desc: INSERT_LEAF off 2, blkref #0: rel 1663/5/16391 blk 1",
		"rmgr: Heap        len (rec/tot):     54/    54, tx:        736, lsn: 0/030000E8, prev 0/030000A8, desc: INSERT off 3 flags 0x08, blkref #0: rel 1663/5/16400 blk 0",
		"rmgr: Heap        len (rec/tot):     72/    72, tx:        737, lsn: 0/03000120, prev 0/030000E8, desc: HOT_UPDATE off 3 xmax 737 flags 0x10 ; new off 4 xmax 0, blkref #0: rel 1663/5/16386 blk 0",
		"rmgr: Heap        len (rec/tot):     54/    54, tx:        737, lsn: 0/03000168, prev 0/03000120, desc: INSERT off 4 flags 0x08, blkref #0: rel 1663/5/16400 blk 0",
		"rmgr: Heap        len (rec/tot):     72/    72, tx:        738, lsn: 0/030001A0, prev 0/03000168, desc: HOT_UPDATE off 4 xmax 738 flags 0x10 ; new off 5 xmax 0, blkref #0: rel 1663/5/16386 blk 0",
		"rmgr: Heap        len (rec/tot):     54/    54, tx:        739, lsn: 0/030001E8, prev 0/030001A0, desc: INSERT off 5 flags 0x08, blkref #0: rel 1663/5/16400 blk 0",
	}
	for _, l := range lines {
		rec, err := parseRecord([]byte(l))
		if err != nil {
			t.Fatal(err)
		}
		w.add(rec)
	}
	commit := func(xid uint64, desc string) walRecord {
		return walRecord{rmgr: "Transaction", xid: xid, desc: "COMMIT 2026-11-26 11:05:14.634328 UTC" + desc}
	}
	for _, tt := range []struct {
		rec  walRecord
		want bool
	}{
		{commit(735, ""), true},
		{commit(736, ""), false},
		{commit(737, ""), false},
		{commit(738, "; subxacts: 739"), false},
		{commit(738, ""), true}, // without its subtransaction it only wrote the heartbeat
		{commit(740, ""), false},
	} {
		if got := w.excluded(tt.rec); got != tt.want {
			t.Errorf("excluded(%d %q) = %v, want %v", tt.rec.xid, tt.rec.desc, got, tt.want)
		}
	}
}
