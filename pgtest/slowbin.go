package pgtest

import (
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// SlowStartBinDir returns a directory holding the bench's PostgreSQL programs, except that its
// pg_ctl takes d longer to start a server (as a long crash recovery would); give it as a
// keeper's bin_dir. It is made under the bench's directory, which the postgres user can reach.
func (b *Bench) SlowStartBinDir(d time.Duration) (string, error) {
	dir, err := os.MkdirTemp(b.Dir, "slowbin-")
	if err != nil {
		return "", fmt.Errorf("pgtest: %w", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", fmt.Errorf("pgtest: %w", err)
	}
	entries, err := os.ReadDir(b.binDir)
	if err != nil {
		return "", fmt.Errorf("pgtest: %w", err)
	}
	for _, e := range entries {
		if e.Name() == "pg_ctl" {
			continue
		}
		if err := os.Symlink(filepath.Join(b.binDir, e.Name()), filepath.Join(dir, e.Name())); err != nil {
			return "", fmt.Errorf("pgtest: %w", err)
		}
	}
	script := fmt.Sprintf("#!/bin/sh\nif [ \"$1\" = start ]; then sleep %.3f; fi\nexec %s \"$@\"\n", d.Seconds(), filepath.Join(b.binDir, "pg_ctl"))
	if err := os.WriteFile(filepath.Join(dir, "pg_ctl"), []byte(script), 0o755); err != nil {
		return "", fmt.Errorf("pgtest: %w", err)
	}
	return dir, nil
}
