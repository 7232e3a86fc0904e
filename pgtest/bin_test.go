package pgtest

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeBinDir makes dir with executable stand-ins for the named programs.
func fakeBinDir(t *testing.T, dir string, progs ...string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range progs {
		if err := os.WriteFile(filepath.Join(dir, p), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestFindBin(t *testing.T) {
	root := t.TempDir()
	all := requiredBins
	fakeBinDir(t, filepath.Join(root, "lib", "9.6", "bin"), all...)
	fakeBinDir(t, filepath.Join(root, "lib", "12", "bin"), all...)
	fakeBinDir(t, filepath.Join(root, "lib", "10", "bin"), all...)
	fakeBinDir(t, filepath.Join(root, "lib", "17", "bin"), "postgres", "initdb") // incomplete
	roots := []string{filepath.Join(root, "lib", "*", "bin")}

	t.Run("highest complete version", func(t *testing.T) {
		t.Setenv("PATH", fakeBinDir(t, filepath.Join(root, "empty")))
		got, err := findBin(roots)
		if err != nil || got != filepath.Join(root, "lib", "12", "bin") {
			t.Fatalf("findBin = %q, %v; want the 12 directory", got, err)
		}
	})

	t.Run("PATH first, through symlinks", func(t *testing.T) {
		real := fakeBinDir(t, filepath.Join(root, "opt", "pg", "bin"), all...)
		link := fakeBinDir(t, filepath.Join(root, "links"))
		if err := os.Symlink(filepath.Join(real, "postgres"), filepath.Join(link, "postgres")); err != nil {
			t.Fatal(err)
		}
		t.Setenv("PATH", link)
		got, err := findBin(roots)
		if err != nil || got != real {
			t.Fatalf("findBin = %q, %v; want %q", got, err, real)
		}
	})

	t.Run("incomplete PATH directory is skipped", func(t *testing.T) {
		t.Setenv("PATH", filepath.Join(root, "lib", "17", "bin"))
		got, err := findBin(roots)
		if err != nil || got != filepath.Join(root, "lib", "12", "bin") {
			t.Fatalf("findBin = %q, %v; want the 12 directory", got, err)
		}
	})

	t.Run("nothing found", func(t *testing.T) {
		t.Setenv("PATH", filepath.Join(root, "empty"))
		_, err := findBin([]string{filepath.Join(root, "nowhere", "*")})
		if !errors.Is(err, ErrNoPostgres) {
			t.Fatalf("err = %v; want ErrNoPostgres", err)
		}
		for _, want := range []string{"apt-get install postgresql", "pg_basebackup", "nowhere"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not mention %q", err, want)
			}
		}
	})

	t.Run("PGTEST_BINDIR", func(t *testing.T) {
		t.Setenv("PGTEST_BINDIR", filepath.Join(root, "lib", "10", "bin"))
		if got, err := FindBin(); err != nil || got != filepath.Join(root, "lib", "10", "bin") {
			t.Fatalf("FindBin = %q, %v", got, err)
		}
		t.Setenv("PGTEST_BINDIR", filepath.Join(root, "lib", "17", "bin"))
		if _, err := FindBin(); !errors.Is(err, ErrNoPostgres) || !strings.Contains(err.Error(), "pg_ctl") {
			t.Fatalf("FindBin with an incomplete PGTEST_BINDIR: %v", err)
		}
	})
}

func TestVersionOf(t *testing.T) {
	tests := []struct {
		dir  string
		want []int
	}{
		{"/usr/lib/postgresql/15/bin", []int{15}},
		{"/usr/lib/postgresql/9.6/bin", []int{9, 6}},
		{"/usr/pgsql-16/bin", []int{16}},
		{"/opt/bin", nil},
	}
	for _, tt := range tests {
		got := versionOf(tt.dir)
		if len(got) != len(tt.want) || (len(got) > 0 && (versionLess(got, tt.want) || versionLess(tt.want, got))) {
			t.Errorf("versionOf(%q) = %v; want %v", tt.dir, got, tt.want)
		}
	}
	if !versionLess([]int{9, 6}, []int{10}) || versionLess([]int{10}, []int{9, 6}) {
		t.Error("versionLess orders 9.6 and 10 wrongly")
	}
}

func TestQuoteDSN(t *testing.T) {
	tests := map[string]string{
		"regent":     "regent",
		"":           "''",
		"a b":        "'a b'",
		`it's`:       `'it\'s'`,
		`back\slash`: `'back\\slash'`,
	}
	for in, want := range tests {
		if got := quoteDSN(in); got != want {
			t.Errorf("quoteDSN(%q) = %s; want %s", in, got, want)
		}
	}
}
