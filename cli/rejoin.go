package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// progressWidth is the width of the catch-up bar of `regent rejoin`.
const progressWidth = 20

// rejoin shows how the old primary of a cluster's latest failover is coming back as a
// standby: status, method, the exact data loss and the lost transactions; --watch follows the
// catch-up with a progress bar until it is caught up.
func (r *runner) rejoin(args []string) error {
	var cluster string
	var follow bool
	fs := r.flagSet("rejoin")
	fs.StringVar(&cluster, "cluster", "", "the `cluster` whose latest failover's old primary to show (required)")
	fs.BoolVar(&follow, "watch", false, "follow the catch-up (bytes behind, rate, ETA) until caught up or failed (Ctrl-C to stop)")
	if err := r.parseClusterCommand(fs, args, &cluster); err != nil {
		return err
	}
	c, err := r.dial()
	if err != nil {
		return err
	}
	ctx, cancel := r.callCtx()
	defer cancel()
	resp, err := c.ListFailoverEvents(ctx, &regentv1.ListFailoverEventsRequest{Read: r.readOptions(), Cluster: cluster})
	if err != nil {
		if follow {
			return r.watchErr("list failover events"+forCluster(cluster), err)
		}
		return r.rpcErrHints("list failover events"+forCluster(cluster), err, clusterHints(cluster))
	}
	var ev *regentv1.FailoverEvent
	for _, e := range resp.GetFailoverEvents() {
		if e.GetCluster() == cluster && e.GetId() > ev.GetId() {
			ev = e
		}
	}
	if ev == nil {
		if r.json() {
			return printJSON(r.stdout, &regentv1.FailoverEvent{})
		}
		_, err := fmt.Fprintf(r.stdout, "no failover events for cluster %s: nothing to rejoin\n", cluster)
		return writeErr(err)
	}
	if r.json() {
		if err := r.writeJSONLine(ev); err != nil {
			return err
		}
	} else if err := writeLines(r.stdout, rejoinBlock(ev, r.now())); err != nil {
		return err
	}
	if !follow || rejoinDone(ev) {
		return nil
	}
	return r.followRejoin(c, ev, resp.GetIndex())
}

// rejoinDone reports whether there is nothing more to follow: caught up or failed.
func rejoinDone(ev *regentv1.FailoverEvent) bool {
	s := ev.GetRejoin().GetStatus()
	return s == regentv1.RejoinStatus_REJOIN_STATUS_CAUGHT_UP || s == regentv1.RejoinStatus_REJOIN_STATUS_FAILED
}

// errRejoinFailed makes `rejoin --watch` exit non-zero when the rejoin is recorded failed.
var errRejoinFailed = errors.New("the rejoin failed; see its detail, and the old primary's keeper log")

// followRejoin watches ev from index on and prints a line per change of its rejoin (with -o
// json, the changed event) until it is caught up or failed.
func (r *runner) followRejoin(c regentv1.RegentClient, ev *regentv1.FailoverEvent, index uint64) error {
	ctx, cancel := context.WithCancel(r.ctx)
	defer cancel()
	stream, err := c.Watch(ctx, &regentv1.WatchRequest{FromIndex: index})
	if err != nil {
		return r.watchErr("watch the rejoin", err)
	}
	known := map[uint64]*regentv1.FailoverEvent{ev.GetId(): ev}
	prev, most := ev, ev.GetRejoin().GetBytesBehind()
	for {
		we, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("the server ended the watch before the rejoin of %s finished; run regent rejoin --cluster %s --watch again", ev.GetFromNode(), ev.GetCluster())
		}
		if err != nil {
			return r.watchErr("watch the rejoin", err)
		}
		for _, u := range eventUpdates(we, ev.GetCluster(), known) {
			if u.id != ev.GetId() || u.cur == nil || proto.Equal(prev.GetRejoin(), u.cur.GetRejoin()) &&
				prev.GetDataLossBytes() == u.cur.GetDataLossBytes() && prev.GetLostTransactions() == u.cur.GetLostTransactions() {
				continue
			}
			most = max(most, u.cur.GetRejoin().GetBytesBehind())
			if r.json() {
				if err := r.writeJSONLine(u.cur); err != nil {
					return err
				}
			} else if _, err := fmt.Fprintf(r.stdout, "%s %s\n", r.now().Format("15:04:05.000"), rejoinLine(u.cur, most)); err != nil {
				return writeErr(err)
			}
			prev = u.cur
			switch u.cur.GetRejoin().GetStatus() {
			case regentv1.RejoinStatus_REJOIN_STATUS_CAUGHT_UP:
				return nil
			case regentv1.RejoinStatus_REJOIN_STATUS_FAILED:
				return errRejoinFailed
			}
		}
	}
}

// rejoinStatus names a rejoin status as operators read it.
func rejoinStatus(s regentv1.RejoinStatus) string {
	switch s {
	case regentv1.RejoinStatus_REJOIN_STATUS_UNSPECIFIED:
		return "not started"
	case regentv1.RejoinStatus_REJOIN_STATUS_CAUGHT_UP:
		return "caught up"
	}
	return strings.ToLower(strings.TrimPrefix(s.String(), "REJOIN_STATUS_"))
}

// rejoinBlock is what `regent rejoin` prints about event e's old primary.
func rejoinBlock(e *regentv1.FailoverEvent, now time.Time) []string {
	rj := e.GetRejoin()
	kind := "failover"
	if e.GetSwitchover() {
		kind = "switchover"
	}
	head := fmt.Sprintf("%s %d of %s: %s → %s, %s", kind, e.GetId(), e.GetCluster(), nodeAt(e.GetFromNode(), e.GetFromRegion()),
		nodeAt(e.GetToNode(), e.GetToRegion()), stepName(e.GetStep()))
	status := rejoinStatus(rj.GetStatus())
	if m := rj.GetMethod(); m != "" {
		status += " (" + m + ")"
	}
	lines := []string{head, fmt.Sprintf("rejoin of %s: %s", e.GetFromNode(), status)}
	add := func(label, format string, a ...any) {
		lines = append(lines, fmt.Sprintf("  %-10s %s", label, fmt.Sprintf(format, a...)))
	}
	if t := rj.GetStartedAt(); t != nil {
		s := fmt.Sprintf("%s (%s ago)", t.AsTime().UTC().Format("15:04:05"), formatDuration(now.Sub(t.AsTime())))
		if f := rj.GetFinishedAt(); f != nil {
			s += fmt.Sprintf(", finished %s after %s", f.AsTime().UTC().Format("15:04:05"), formatDuration(f.AsTime().Sub(t.AsTime())))
		}
		add("started", "%s", s)
	}
	add("data loss", "%s", rejoinLoss(e))
	if e.LostTransactions != nil {
		add("lost", "%d transactions (regent's own heartbeat commits not counted)", e.GetLostTransactions())
	} else {
		add("lost", "unknown transactions: counted when the old primary's keeper rejoins it")
	}
	if rj.GetStatus() == regentv1.RejoinStatus_REJOIN_STATUS_REBUILDING {
		add("catch-up", "%s", progress(rj, 0, false))
	}
	if d := rj.GetDetail(); d != "" {
		add("detail", "%s", d)
	}
	if rj == nil && e.GetStep() == regentv1.FailoverStep_FAILOVER_STEP_COMPLETED {
		add("note", "the leader rejoins an old primary through its keeper (keeper_addr in the spec); without one, rejoin it by hand")
	}
	return lines
}

// rejoinLoss prints the event's data loss with the fork and final LSNs once measured.
func rejoinLoss(e *regentv1.FailoverEvent) string {
	if e.DataLossBytes == nil || !e.GetDataLossExact() {
		return dataLoss(e) + "; exact once the old primary's keeper has measured it"
	}
	s := fmt.Sprintf("%s (%d bytes, exact)", lossBytes(e.GetDataLossBytes()), e.GetDataLossBytes())
	if e.GetForkLsn() != 0 || e.GetFinalLsn() != 0 {
		s += fmt.Sprintf(": fork %s → final %s", formatLSN(e.GetForkLsn()), formatLSN(e.GetFinalLsn()))
	}
	return s
}

// rejoinLine is one line of `rejoin --watch`: the node, its status and, while rebuilding, the
// progress bar measured against most, the most bytes behind seen.
func rejoinLine(e *regentv1.FailoverEvent, most uint64) string {
	rj := e.GetRejoin()
	s := fmt.Sprintf("%s %s", e.GetFromNode(), rejoinStatus(rj.GetStatus()))
	switch rj.GetStatus() {
	case regentv1.RejoinStatus_REJOIN_STATUS_REBUILDING:
		s += " " + progress(rj, most, true)
		if e.GetDataLossExact() && rj.GetBytesBehind() == 0 && rj.GetRateBytesPerSecond() == 0 {
			s += fmt.Sprintf("; data loss %s, %s", lossBytes(e.GetDataLossBytes()), lostTransactions(e))
		}
	case regentv1.RejoinStatus_REJOIN_STATUS_CAUGHT_UP:
		s += fmt.Sprintf(" (%s); data loss %s, %s", rj.GetMethod(), dataLoss(e), lostTransactions(e))
	default:
		if d := rj.GetDetail(); d != "" {
			s += ": " + d
		}
	}
	return s
}

func lostTransactions(e *regentv1.FailoverEvent) string {
	if e.LostTransactions == nil {
		return "lost transactions unknown"
	}
	return fmt.Sprintf("%d lost transactions", e.GetLostTransactions())
}

// progress prints the catch-up: with watch, a bar of the share of most (the most bytes behind
// seen while watching) made up; then bytes behind, rate and ETA.
func progress(rj *regentv1.Rejoin, most uint64, watch bool) string {
	behind := rj.GetBytesBehind()
	s := formatBytes(behind) + " behind"
	if watch {
		done := progressWidth
		if most > 0 && behind <= most {
			done = int(float64(most-behind) / float64(most) * progressWidth)
		}
		s = "[" + strings.Repeat("#", done) + strings.Repeat("-", progressWidth-done) + "] " + s
	}
	if rate := rj.GetRateBytesPerSecond(); rate > 0 {
		s += fmt.Sprintf(", %s/s", formatBytes(uint64(rate)))
		if eta := rj.GetEtaSeconds(); eta > 0 {
			s += ", ETA " + formatDuration(time.Duration(eta*float64(time.Second)))
		}
	} else {
		s += ", rate unknown"
	}
	return s
}

// writeLines writes each line to w.
func writeLines(w io.Writer, lines []string) error {
	for _, l := range lines {
		if _, err := fmt.Fprintln(w, l); err != nil {
			return writeErr(err)
		}
	}
	return nil
}
