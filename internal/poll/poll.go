// Package poll waits for a condition by checking it on a ticker until a deadline — the one way
// regent's tests (and test helpers) wait for something to happen, instead of sleeping.
package poll

import "time"

// Until checks cond at once and then every interval until it holds (true) or timeout passes
// (false).
func Until(timeout, interval time.Duration, cond func() bool) bool {
	if cond() {
		return true
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-deadline.C:
			return cond()
		case <-tick.C:
			if cond() {
				return true
			}
		}
	}
}
