package probe

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"
)

// Loop probes a set of targets every interval, each target on its own
// schedule in its own goroutine, so that a hung node delays only its own
// probes. Results go to a callback. Targets can be replaced at any time
// with SetTargets.
type Loop struct {
	prober   *Prober
	interval time.Duration
	deliver  func(Result)

	mu      sync.Mutex
	want    map[string]Target
	running map[string]*runner // while Run runs
	ctx     context.Context    // Run's context, while Run runs
	wg      sync.WaitGroup
	started bool
}

// runner is the goroutine probing one target.
type runner struct {
	mu     sync.Mutex
	target Target
	cancel context.CancelFunc
}

func (r *runner) get() Target {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.target
}

func (r *runner) set(t Target) {
	r.mu.Lock()
	r.target = t
	r.mu.Unlock()
}

// NewLoop returns a Loop that probes with p every interval and passes each
// Result to deliver. deliver is called from the targets' goroutines,
// concurrently for different targets: it must be safe for that, and should
// return quickly, since the next probe of its target waits for it. Results
// of probes cut short by the end of Run are not delivered.
func NewLoop(p *Prober, interval time.Duration, deliver func(Result)) *Loop {
	return &Loop{prober: p, interval: interval, deliver: deliver, want: map[string]Target{}}
}

// SetTargets replaces the set of targets. Targets are matched by Key: a new
// key starts being probed at once, a missing key stops being probed (and
// its connection is closed; a probe of it that had just finished may still
// be delivered), and a changed target is probed with its new
// settings from its next probe on. Duplicate keys and invalid targets are
// refused, leaving the set unchanged.
func (l *Loop) SetTargets(targets []Target) error {
	want := make(map[string]Target, len(targets))
	var errs []error
	for _, t := range targets {
		if err := t.Validate(); err != nil {
			errs = append(errs, err)
			continue
		}
		if _, dup := want[t.Key()]; dup {
			errs = append(errs, fmt.Errorf("probe: target %s appears twice; each cluster/node pair must be unique", t.Key()))
			continue
		}
		want[t.Key()] = t
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.want = want
	if l.ctx != nil {
		l.reconcileLocked()
	}
	return nil
}

// Targets returns the current targets, in no particular order.
func (l *Loop) Targets() []Target {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]Target, 0, len(l.want))
	for _, t := range l.want {
		out = append(out, t)
	}
	return out
}

func (l *Loop) reconcileLocked() {
	for k, r := range l.running {
		if _, ok := l.want[k]; !ok {
			r.cancel()
			delete(l.running, k)
		}
	}
	for k, t := range l.want {
		if r, ok := l.running[k]; ok {
			r.set(t)
			continue
		}
		ctx, cancel := context.WithCancel(l.ctx)
		r := &runner{target: t, cancel: cancel}
		l.running[k] = r
		l.wg.Add(1)
		go l.run(ctx, r)
	}
}

// Run probes the targets until ctx ends, then stops every target's
// goroutine, waits for them all and returns nil. Run may be called once.
func (l *Loop) Run(ctx context.Context) error {
	if l.interval <= 0 {
		return fmt.Errorf("probe: loop interval %v must be positive", l.interval)
	}
	l.mu.Lock()
	if l.started {
		l.mu.Unlock()
		return errors.New("probe: Loop.Run called twice; make a new Loop")
	}
	l.started = true
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	l.ctx = runCtx
	l.running = map[string]*runner{}
	l.reconcileLocked()
	l.mu.Unlock()

	<-ctx.Done()

	l.mu.Lock()
	l.ctx = nil
	l.running = nil
	l.mu.Unlock()
	cancel()
	l.wg.Wait()
	return nil
}

func (l *Loop) run(ctx context.Context, r *runner) {
	defer l.wg.Done()
	key := r.get().Key()
	// Close this target's connection on the way out, unless the target
	// has been added again meanwhile and a new runner uses it.
	defer func() {
		l.mu.Lock()
		_, again := l.running[key]
		l.mu.Unlock()
		if !again {
			l.prober.Forget(key)
		}
	}()
	// The first probe runs at once; the ticks after it start at a random
	// offset within one interval, so that many targets added together do
	// not probe (and load their servers) in lockstep.
	res := l.prober.Probe(ctx, r.get())
	if ctx.Err() != nil {
		return
	}
	l.deliver(res)
	offset := time.NewTimer(rand.N(l.interval))
	select {
	case <-ctx.Done():
		offset.Stop()
		return
	case <-offset.C:
	}
	tick := time.NewTicker(l.interval)
	defer tick.Stop()
	for {
		res := l.prober.Probe(ctx, r.get())
		if ctx.Err() != nil {
			return
		}
		l.deliver(res)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
