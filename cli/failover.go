package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// failoverOpts are the flags of `regent failover`.
type failoverOpts struct {
	cluster string
	to      string
	force   bool
	reason  string
}

// failoverFlags registers the flags of `regent failover` on fs.
func failoverFlags(fs *flag.FlagSet) *failoverOpts {
	o := &failoverOpts{}
	fs.StringVar(&o.cluster, "cluster", "", "fail over this `cluster` (required)")
	fs.StringVar(&o.to, "to", "", "promote this `node` (default: the candidate an automatic failover would pick)")
	fs.BoolVar(&o.force, "force", false,
		"skip the lag gate (max_lag_on_failover, failover_lag_threshold); never skips the fence")
	fs.StringVar(&o.reason, "reason", "", "why: `text` recorded as the event's trigger reason")
	return o
}

// pauseOpts are the flags of `regent pause` and `regent resume`.
type pauseOpts struct {
	cluster string
	reason  string
}

// pauseFlags registers the flags of `regent pause` (withReason) or `regent resume` on fs.
func pauseFlags(fs *flag.FlagSet, withReason bool) *pauseOpts {
	o := &pauseOpts{}
	if withReason {
		fs.StringVar(&o.cluster, "cluster", "", "pause automatic failover of this `cluster` (required)")
		fs.StringVar(&o.reason, "reason", "", "why: `text` shown by regent status until resumed")
	} else {
		fs.StringVar(&o.cluster, "cluster", "", "resume automatic failover of this `cluster` (required)")
	}
	return o
}

// parseClusterCommand parses a command that acts on the one cluster named by its required
// --cluster flag and takes no positional arguments.
func (r *runner) parseClusterCommand(fs *flag.FlagSet, args []string, cluster *string) error {
	pos, err := r.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("%s takes no arguments, got %q (name the cluster with --cluster C)",
			r.cmd.Name, strings.Join(pos, " "))
	}
	if *cluster == "" {
		return usagef("%s needs --cluster C", r.cmd.Name)
	}
	return nil
}

// clusterHints are the hints for a failed call about one cluster.
func clusterHints(cluster string) map[codes.Code]string {
	return map[codes.Code]string{
		codes.NotFound: "list the clusters with: regent cluster list",
		codes.FailedPrecondition: "see the cluster with: regent status; follow a running failover with: " +
			"regent events --cluster " + cluster + " --watch",
	}
}

func (r *runner) failover(args []string) error {
	fs := r.flagSet("failover")
	o := failoverFlags(fs)
	if err := r.parseClusterCommand(fs, args, &o.cluster); err != nil {
		return err
	}
	c, err := r.dial()
	if err != nil {
		return err
	}
	ctx, cancel := r.callCtx()
	defer cancel()
	resp, err := c.Failover(ctx, &regentv1.FailoverRequest{Cluster: o.cluster, To: o.to, Force: o.force, Reason: o.reason})
	if err != nil {
		return r.rpcErrHints("fail over "+o.cluster, err, clusterHints(o.cluster))
	}
	if r.json() {
		return printJSON(r.stdout, resp)
	}
	ev := resp.GetEvent()
	name := ev.GetCluster()
	if name == "" {
		name = o.cluster
	}
	_, err = fmt.Fprintf(r.stdout, "failover %d of %s started: %s → %s; follow it with: regent events --cluster %s --watch\n",
		ev.GetId(), name, nodeAt(ev.GetFromNode(), ev.GetFromRegion()), nodeAt(ev.GetToNode(), ev.GetToRegion()), name)
	return writeErr(err)
}

func (r *runner) pause(args []string) error {
	fs := r.flagSet("pause")
	o := pauseFlags(fs, true)
	if err := r.parseClusterCommand(fs, args, &o.cluster); err != nil {
		return err
	}
	c, err := r.dial()
	if err != nil {
		return err
	}
	ctx, cancel := r.callCtx()
	defer cancel()
	resp, err := c.Pause(ctx, &regentv1.PauseRequest{Cluster: o.cluster, Reason: o.reason})
	if err != nil {
		return r.rpcErrHints("pause "+o.cluster, err, clusterHints(o.cluster))
	}
	if r.json() {
		return printJSON(r.stdout, resp)
	}
	reason := resp.GetCluster().GetPauseReason() // the server's record, which may name who paused
	if reason == "" {
		reason = o.reason
	}
	if reason != "" {
		reason = " (" + reason + ")"
	}
	_, err = fmt.Fprintf(r.stdout, "automatic failover of %s paused%s\n", o.cluster, reason)
	return writeErr(err)
}

func (r *runner) resume(args []string) error {
	fs := r.flagSet("resume")
	o := pauseFlags(fs, false)
	if err := r.parseClusterCommand(fs, args, &o.cluster); err != nil {
		return err
	}
	c, err := r.dial()
	if err != nil {
		return err
	}
	ctx, cancel := r.callCtx()
	defer cancel()
	resp, err := c.Resume(ctx, &regentv1.ResumeRequest{Cluster: o.cluster})
	if err != nil {
		return r.rpcErrHints("resume "+o.cluster, err, clusterHints(o.cluster))
	}
	if r.json() {
		return printJSON(r.stdout, resp)
	}
	_, err = fmt.Fprintf(r.stdout, "automatic failover of %s resumed\n", o.cluster)
	return writeErr(err)
}

// writeErr wraps a failed write to stdout.
func writeErr(err error) error {
	if err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	return nil
}

// followEvents is `events --watch`: having printed list, it follows the Watch stream from
// list's index and prints each change of a failover event (of cluster, when set) until the
// server ends the stream or ctx is cancelled. With -o json it prints list and then each
// changed event's WatchEvent, one compact JSON object a line.
func (r *runner) followEvents(c regentv1.RegentClient, cluster string, list *regentv1.ListFailoverEventsResponse) error {
	known := make(map[uint64]*regentv1.FailoverEvent)
	for _, e := range list.GetFailoverEvents() {
		known[e.GetId()] = e
	}
	if r.json() {
		if err := r.writeJSONLine(list); err != nil {
			return err
		}
	} else {
		if err := r.printEventList(cluster, list.GetFailoverEvents()); err != nil {
			return err
		}
		if _, err := fmt.Fprintf(r.stdout, "\nfollowing failover events%s after index %d (Ctrl-C to stop)\n",
			forCluster(cluster), list.GetIndex()); err != nil {
			return writeErr(err)
		}
	}

	ctx, cancel := context.WithCancel(r.ctx)
	defer cancel()
	stream, err := c.Watch(ctx, &regentv1.WatchRequest{FromIndex: list.GetIndex()})
	if err != nil {
		return r.watchErr("watch failover events", err)
	}
	for {
		ev, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return r.watchErr("watch failover events", err)
		}
		for _, ch := range eventUpdates(ev, cluster, known) {
			if err := r.printEventUpdate(ch); err != nil {
				return err
			}
		}
	}
}

// eventUpdate is one failover event as a watch reported it, with the version seen before.
type eventUpdate struct {
	index   uint64
	id      uint64
	prev    *regentv1.FailoverEvent // nil when new
	cur     *regentv1.FailoverEvent // nil when deleted
	deleted bool
}

// eventUpdates picks from ev the failover events of cluster ("" for all) that changed since
// known, and updates known. A snapshot is compared with known as a whole: changed events
// are reported, events missing from it as deleted.
func eventUpdates(ev *regentv1.WatchEvent, cluster string, known map[uint64]*regentv1.FailoverEvent) []eventUpdate {
	match := func(e *regentv1.FailoverEvent) bool { return cluster == "" || e.GetCluster() == cluster }
	var out []eventUpdate
	switch ev.GetKind() {
	case "failover_event":
		e := ev.GetFailoverEvent()
		id := e.GetId()
		if id == 0 {
			id, _ = strconv.ParseUint(ev.GetKey(), 10, 64)
		}
		prev, seen := known[id]
		if ev.GetDeleted() {
			if seen {
				delete(known, id)
				out = append(out, eventUpdate{index: ev.GetIndex(), id: id, prev: prev, deleted: true})
			}
			return out
		}
		if e == nil || !match(e) || (seen && proto.Equal(prev, e)) {
			return out
		}
		known[id] = e
		out = append(out, eventUpdate{index: ev.GetIndex(), id: id, prev: prev, cur: e})
	case "snapshot":
		inSnapshot := make(map[uint64]bool)
		for _, e := range sortedEvents(ev.GetState().GetFailoverEvents()) {
			if !match(e) {
				continue
			}
			inSnapshot[e.GetId()] = true
			prev, seen := known[e.GetId()]
			if seen && proto.Equal(prev, e) {
				continue
			}
			known[e.GetId()] = e
			out = append(out, eventUpdate{index: ev.GetIndex(), id: e.GetId(), prev: prev, cur: e})
		}
		var gone []*regentv1.FailoverEvent
		for id, e := range known {
			if !inSnapshot[id] {
				gone = append(gone, e)
			}
		}
		for _, e := range sortedEvents(gone) {
			delete(known, e.GetId())
			out = append(out, eventUpdate{index: ev.GetIndex(), id: e.GetId(), prev: e, deleted: true})
		}
	}
	return out
}

// printEventUpdate prints one changed event: its change lines, or with -o json a WatchEvent
// of kind failover_event.
func (r *runner) printEventUpdate(u eventUpdate) error {
	if r.json() {
		return r.writeJSONLine(&regentv1.WatchEvent{Index: u.index, Kind: "failover_event",
			Key: strconv.FormatUint(u.id, 10), Deleted: u.deleted, FailoverEvent: u.cur})
	}
	now := r.now()
	var lines []string
	if u.deleted {
		lines = []string{fmt.Sprintf("%s event %d %s deleted", watchClock(now, now), u.id, dash(u.prev.GetCluster()))}
	} else {
		lines = eventChanges(u.prev, u.cur, now)
	}
	for _, l := range lines {
		if _, err := fmt.Fprintln(r.stdout, l); err != nil {
			return writeErr(err)
		}
	}
	return nil
}

// writeJSONLine writes m as one line of compact protojson.
func (r *runner) writeJSONLine(m proto.Message) error {
	out, err := marshalJSON(m, false)
	if err != nil {
		return err
	}
	_, err = r.stdout.Write(out)
	return writeErr(err)
}
