//go:build !linux

package dnstest

import (
	"os"
	"syscall"
)

// terminate asks named to shut down cleanly.
var terminate os.Signal = syscall.SIGTERM

// sysProcAttr is empty where the kernel cannot tie named's life to the test process's.
func sysProcAttr() *syscall.SysProcAttr { return nil }
