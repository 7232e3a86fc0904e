package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"google.golang.org/protobuf/proto"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// switchoverOpts are the flags of `regent switchover`.
type switchoverOpts struct {
	cluster string
	to      string
	reason  string
	wait    bool
}

// switchoverFlags registers the flags of `regent switchover` on fs (--timeout is the global
// flag, which this command also takes as the switchover's bound).
func switchoverFlags(fs *flag.FlagSet) *switchoverOpts {
	o := &switchoverOpts{}
	fs.StringVar(&o.cluster, "cluster", "", "switch this `cluster` over (required)")
	fs.StringVar(&o.to, "to", "", "promote this streaming standby `node` (required)")
	fs.StringVar(&o.reason, "reason", "", "why: `text` recorded with the event")
	fs.BoolVar(&o.wait, "wait", false, "follow the switchover until it completes or aborts, and print the measured data loss")
	return o
}

func (r *runner) switchover(args []string) error {
	fs := r.flagSet("switchover")
	o := switchoverFlags(fs)
	if err := r.parseClusterCommand(fs, args, &o.cluster); err != nil {
		return err
	}
	if o.to == "" {
		return usagef("switchover needs --to NODE: the standby to promote")
	}
	// --timeout given (after the command word, or before it with another value than the
	// default) is the switchover's bound too; otherwise the policy decides.
	var timeout time.Duration
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "timeout" {
			timeout = r.g.timeout
		}
	})
	if timeout == 0 && r.g.timeout != DefaultTimeout {
		timeout = r.g.timeout
	}
	c, err := r.dial()
	if err != nil {
		return err
	}
	ctx, cancel := r.callCtx()
	defer cancel()
	resp, err := c.Switchover(ctx, &regentv1.SwitchoverRequest{Cluster: o.cluster, To: o.to, TimeoutMs: timeout.Milliseconds(), Reason: o.reason})
	if err != nil {
		return r.rpcErrHints("switch "+o.cluster+" over to "+o.to, err, clusterHints(o.cluster))
	}
	ev := resp.GetEvent()
	if r.json() {
		if err := r.writeJSONLine(resp); err != nil {
			return err
		}
	} else if _, err := fmt.Fprintf(r.stdout, "switchover %d of %s started: %s → %s\n", ev.GetId(), o.cluster,
		nodeAt(ev.GetFromNode(), ev.GetFromRegion()), nodeAt(ev.GetToNode(), ev.GetToRegion())); err != nil {
		return writeErr(err)
	}
	if !o.wait {
		if !r.json() {
			_, err := fmt.Fprintf(r.stdout, "follow it with: regent events --cluster %s --watch\n", o.cluster)
			return writeErr(err)
		}
		return nil
	}
	return r.followSwitchover(c, ev)
}

// errSwitchoverAborted makes `switchover --wait` exit non-zero when the switchover aborted.
var errSwitchoverAborted = errors.New("the switchover aborted; the old primary takes writes again unless the reason says otherwise")

// followSwitchover watches event ev from its start until it completes or aborts, printing each
// change (with -o json: each changed event, a line each) and then the outcome.
func (r *runner) followSwitchover(c regentv1.RegentClient, ev *regentv1.FailoverEvent) error {
	ctx, cancel := context.WithCancel(r.ctx)
	defer cancel()
	stream, err := c.Watch(ctx, &regentv1.WatchRequest{})
	if err != nil {
		return r.watchErr("watch the switchover", err)
	}
	known := map[uint64]*regentv1.FailoverEvent{}
	var prev *regentv1.FailoverEvent
	for {
		we, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("the server ended the watch before switchover %d finished; follow it with: regent events --cluster %s --watch", ev.GetId(), ev.GetCluster())
		}
		if err != nil {
			return r.watchErr("watch the switchover", err)
		}
		for _, u := range eventUpdates(we, ev.GetCluster(), known) {
			if u.id != ev.GetId() || u.cur == nil || proto.Equal(prev, u.cur) {
				continue
			}
			if r.json() {
				if err := r.writeJSONLine(u.cur); err != nil {
					return err
				}
			} else {
				for _, l := range eventChanges(prev, u.cur, r.now()) {
					if _, err := fmt.Fprintln(r.stdout, l); err != nil {
						return writeErr(err)
					}
				}
			}
			prev = u.cur
			switch u.cur.GetStep() {
			case regentv1.FailoverStep_FAILOVER_STEP_COMPLETED:
				if !r.json() {
					if _, err := fmt.Fprintln(r.stdout, switchoverOutcome(u.cur)); err != nil {
						return writeErr(err)
					}
				}
				return nil
			case regentv1.FailoverStep_FAILOVER_STEP_ABORTED:
				if !r.json() {
					if _, err := fmt.Fprintf(r.stdout, "switchover %d aborted: %s\n", u.cur.GetId(), u.cur.GetAbortReason()); err != nil {
						return writeErr(err)
					}
				}
				return errSwitchoverAborted
			}
		}
	}
}

// switchoverOutcome is the last line of `switchover --wait`: the new primary, the measured
// loss and how long there was no writable primary (from fenced to promoted is a lower bound;
// the decision to the promotion an upper one).
func switchoverOutcome(e *regentv1.FailoverEvent) string {
	s := fmt.Sprintf("switchover %d of %s completed: %s is the primary; %s", e.GetId(), e.GetCluster(), e.GetToNode(), dataLossChange(e))
	if e.GetFinalLsn() != 0 {
		s += fmt.Sprintf("; the old primary's WAL ended at %s and %s had replayed it", formatLSN(e.GetFinalLsn()), e.GetToNode())
	}
	var decided, promoted time.Time
	for _, st := range e.GetSteps() {
		switch st.GetStep() {
		case regentv1.FailoverStep_FAILOVER_STEP_DECIDED:
			decided = st.GetAt().AsTime()
		case regentv1.FailoverStep_FAILOVER_STEP_PROMOTED:
			promoted = st.GetAt().AsTime()
		}
	}
	if !decided.IsZero() && !promoted.IsZero() {
		s += fmt.Sprintf("; decided → promoted in %s", formatDuration(promoted.Sub(decided)))
	}
	return s
}
