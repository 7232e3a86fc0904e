package pgtest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// ErrNoPostgres is returned (wrapped) by FindBin and New when no usable
// PostgreSQL server binaries were found. Match it with errors.Is.
var ErrNoPostgres = errors.New("PostgreSQL server binaries not found")

// requiredBins are the programs a bench needs from one directory.
var requiredBins = []string{"postgres", "initdb", "pg_ctl", "pg_basebackup"}

// defaultRoots are the glob patterns searched after PATH, Debian/Ubuntu
// style first, then the PGDG RPM layout.
var defaultRoots = []string{"/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin"}

// FindBin returns the directory that holds the PostgreSQL server programs
// (postgres, initdb, pg_ctl, pg_basebackup). It looks at the directory of
// `postgres` on PATH first (following symlinks, so a link in /usr/local/bin
// to /usr/lib/postgresql/15/bin/postgres yields the latter), then at the
// highest version under /usr/lib/postgresql/*/bin and /usr/pgsql-*/bin.
// The environment variable PGTEST_BINDIR, when set, is used as is.
//
// The error wraps ErrNoPostgres and says where it looked and how to install
// PostgreSQL.
func FindBin() (string, error) {
	if dir := os.Getenv("PGTEST_BINDIR"); dir != "" {
		if missing := missingBins(dir); len(missing) > 0 {
			return "", fmt.Errorf("%w: PGTEST_BINDIR=%s lacks %s; point it at a PostgreSQL bin directory or unset it",
				ErrNoPostgres, dir, strings.Join(missing, ", "))
		}
		return dir, nil
	}
	return findBin(defaultRoots)
}

func findBin(roots []string) (string, error) {
	var looked []string
	if p, err := exec.LookPath("postgres"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			p = real
		}
		dir := filepath.Dir(p)
		if len(missingBins(dir)) == 0 {
			return dir, nil
		}
		looked = append(looked, dir+" (from PATH)")
	} else {
		looked = append(looked, "PATH")
	}
	type cand struct {
		dir string
		ver []int
	}
	var cands []cand
	for _, pattern := range roots {
		matches, _ := filepath.Glob(pattern)
		looked = append(looked, pattern)
		for _, m := range matches {
			if len(missingBins(m)) == 0 {
				cands = append(cands, cand{m, versionOf(m)})
			}
		}
	}
	if len(cands) > 0 {
		sort.SliceStable(cands, func(i, j int) bool { return versionLess(cands[j].ver, cands[i].ver) })
		return cands[0].dir, nil
	}
	return "", fmt.Errorf("%w: need %s in one directory; looked in %s; install PostgreSQL (e.g. `apt-get install postgresql`) or set PGTEST_BINDIR",
		ErrNoPostgres, strings.Join(requiredBins, ", "), strings.Join(looked, ", "))
}

// missingBins lists the required programs that are not executable files in dir.
func missingBins(dir string) []string {
	var missing []string
	for _, b := range requiredBins {
		fi, err := os.Stat(filepath.Join(dir, b))
		if err != nil || fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
			missing = append(missing, b)
		}
	}
	return missing
}

// versionOf extracts the numeric version from the name of the directory
// above bin, as in /usr/lib/postgresql/15/bin or /usr/pgsql-9.6/bin; nil
// when that name is not a version.
func versionOf(dir string) []int {
	name := strings.TrimPrefix(filepath.Base(filepath.Dir(dir)), "pgsql-")
	var ver []int
	for _, f := range strings.Split(name, ".") {
		n, err := strconv.Atoi(f)
		if err != nil {
			return nil
		}
		ver = append(ver, n)
	}
	return ver
}

func versionLess(a, b []int) bool {
	for i := 0; i < len(a) && i < len(b); i++ {
		if a[i] != b[i] {
			return a[i] < b[i]
		}
	}
	return len(a) < len(b)
}
