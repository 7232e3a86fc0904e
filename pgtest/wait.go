package pgtest

import (
	"context"
	"fmt"
	"time"
)

// WaitFor calls cond until it returns true, ctx ends, or cond is never
// going to be asked again. Polling starts every 5ms and backs off to every
// 100ms. An error from cond does not stop the polling (a server that is
// restarting refuses connections for a while); it is kept, and on timeout
// WaitFor returns both the context's error and the last error from cond, so
// errors.Is(err, context.DeadlineExceeded) works.
//
// Give ctx a deadline: without one, WaitFor waits as long as cond is false.
func WaitFor(ctx context.Context, cond func(ctx context.Context) (bool, error)) error {
	interval := 5 * time.Millisecond
	var last error
	for {
		ok, err := cond(ctx)
		if ok {
			return nil
		}
		if err != nil {
			last = err
		}
		t := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			t.Stop()
			if last != nil {
				return fmt.Errorf("pgtest: condition not met: %w (last error: %w)", ctx.Err(), last)
			}
			return fmt.Errorf("pgtest: condition not met: %w", ctx.Err())
		case <-t.C:
		}
		interval = min(2*interval, 100*time.Millisecond)
	}
}
