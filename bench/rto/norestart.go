package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/regentdb/regent/lab"
)

// breakRestart makes the primary's PostgreSQL unable to start (a line that is not a setting
// appended to its postgresql.conf) and kills its postmaster with SIGKILL; the keeper stays and
// finds that it cannot restart it.
func breakRestart(l *lab.Lab) (lab.Killed, error) {
	p := l.Primary()
	if p == nil {
		return lab.Killed{}, errors.New("no primary")
	}
	f, err := os.OpenFile(filepath.Join(p.Server.DataDir, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return lab.Killed{}, fmt.Errorf("break the configuration of %s: %w", p.Name, err)
	}
	_, err = f.WriteString("\nbench/rto: this line is not a setting, so PostgreSQL refuses to start\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return lab.Killed{}, fmt.Errorf("break the configuration of %s: %w", p.Name, err)
	}
	return l.CrashPrimary()
}
