package dnstest

import (
	"os"
	"syscall"
)

// terminate asks named to shut down cleanly.
var terminate os.Signal = syscall.SIGTERM

// sysProcAttr has the kernel kill named if the test process dies first, so that no named
// outlives a crashed or killed test binary.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
