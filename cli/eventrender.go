package cli

import (
	"fmt"
	"io"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// Time-of-day layouts: tenths of a second for step times in event details, milliseconds for
// the lines of `events --watch`.
const (
	clockTenths = "15:04:05.0"
	clockMillis = "15:04:05.000"
	clockSecond = "15:04:05"
)

// clock prints t as a time of day in now's zone, preceded by its date when that is not now's
// date.
func clock(t, now time.Time, layout string) string {
	t = t.In(now.Location())
	if y, m, d := t.Date(); y != now.Year() || m != now.Month() || d != now.Day() {
		return t.Format("2006-01-02 " + layout)
	}
	return t.Format(layout)
}

// watchClock prints t for a line of `events --watch`: the time of day with milliseconds, in
// now's zone.
func watchClock(t, now time.Time) string {
	return t.In(now.Location()).Format(clockMillis)
}

// formatOffset prints how long after a saga's first step a later one was committed: +0.4s,
// +12.3s, +4m30s. A negative offset (leaders with skewed clocks) keeps its sign.
func formatOffset(d time.Duration) string {
	sign := "+"
	if d < 0 {
		sign, d = "-", -d
	}
	if d < time.Minute {
		return sign + fmt.Sprintf("%.1fs", d.Seconds())
	}
	return sign + formatDuration(d)
}

// openStep reports whether a saga at step s is still running.
func openStep(s regentv1.FailoverStep) bool {
	return s >= regentv1.FailoverStep_FAILOVER_STEP_DECIDED && s < regentv1.FailoverStep_FAILOVER_STEP_COMPLETED
}

// eventSteps returns the event's committed steps in commit order. An event recorded without
// step times gets them from started_at and, once it ended, completed_at.
func eventSteps(e *regentv1.FailoverEvent) []*regentv1.StepTime {
	if len(e.GetSteps()) > 0 {
		return e.GetSteps()
	}
	var out []*regentv1.StepTime
	if set(e.GetStartedAt()) {
		out = append(out, &regentv1.StepTime{Step: regentv1.FailoverStep_FAILOVER_STEP_DECIDED, At: e.GetStartedAt()})
	}
	if !openStep(e.GetStep()) && e.GetStep() != regentv1.FailoverStep_FAILOVER_STEP_UNSPECIFIED && set(e.GetCompletedAt()) {
		out = append(out, &regentv1.StepTime{Step: e.GetStep(), At: e.GetCompletedAt()})
	}
	return out
}

// reached reports whether the event committed step s.
func reached(e *regentv1.FailoverEvent, s regentv1.FailoverStep) bool {
	if e.GetStep() == s {
		return true
	}
	for _, st := range e.GetSteps() {
		if st.GetStep() == s {
			return true
		}
	}
	return false
}

// formatSteps prints the event's steps with their times: the first as a time of day, the
// others as offsets from it, e.g. "decided 10:00:01.2 → fenced +0.4s → promoted +1.1s".
func formatSteps(e *regentv1.FailoverEvent, now time.Time) string {
	steps := eventSteps(e)
	if len(steps) == 0 {
		return "-"
	}
	var first time.Time
	parts := make([]string, len(steps))
	for i, st := range steps {
		parts[i] = stepName(st.GetStep())
		if !set(st.GetAt()) {
			continue
		}
		at := st.GetAt().AsTime()
		if first.IsZero() {
			first = at
			parts[i] += " " + clock(at, now, clockTenths)
		} else {
			parts[i] += " " + formatOffset(at.Sub(first))
		}
	}
	return strings.Join(parts, " → ")
}

// eventDuration is how long the saga ran, from started_at to completed_at or else to its
// last step; ok is false when unknown.
func eventDuration(e *regentv1.FailoverEvent) (d time.Duration, ok bool) {
	if !set(e.GetStartedAt()) {
		return 0, false
	}
	end := e.GetCompletedAt()
	if !set(end) {
		steps := e.GetSteps()
		if len(steps) == 0 || !set(steps[len(steps)-1].GetAt()) {
			return 0, false
		}
		end = steps[len(steps)-1].GetAt()
	}
	return end.AsTime().Sub(e.GetStartedAt().AsTime()), true
}

// outcome prints where the event stands: "completed in 1.4s", "aborted after 0.2s",
// "RUNNING, at step fenced".
func outcome(e *regentv1.FailoverEvent) string {
	d, ok := eventDuration(e)
	switch s := e.GetStep(); {
	case s == regentv1.FailoverStep_FAILOVER_STEP_COMPLETED && ok:
		return "completed in " + formatDuration(d)
	case s == regentv1.FailoverStep_FAILOVER_STEP_ABORTED && ok:
		return "aborted after " + formatDuration(d)
	case openStep(s):
		return "RUNNING, at step " + stepName(s)
	default:
		return stepName(s)
	}
}

// trigger prints who started the failover and why: "automatic: primary unreachable",
// "manual, forced (lag gate skipped): drill".
func trigger(e *regentv1.FailoverEvent) string {
	kind := "automatic"
	switch {
	case e.GetManual() && e.GetForce():
		kind = "manual, forced (lag gate skipped)"
	case e.GetManual():
		kind = "manual"
	case e.GetForce():
		kind = "forced (lag gate skipped)"
	}
	if r := e.GetTriggerReason(); r != "" {
		return kind + ": " + r
	}
	return kind
}

// fenceDetail explains the fence method that held; "" when none is recorded.
func fenceDetail(e *regentv1.FailoverEvent) string {
	switch m := e.GetFenceMethod(); m {
	case "":
		return ""
	case "sql":
		return "sql (old primary set read-only, its client backends terminated)"
	case "command":
		return "command (fence_command exited 0)"
	case "lease":
		return "lease (no method confirmed; the old primary's lease epoch was revoked at a majority of witnesses and regent waited until it had surely lapsed)"
	default:
		return m
	}
}

// promotedAt prints the promoted node's new timeline and LSN, or "" when unknown.
func promotedAt(e *regentv1.FailoverEvent) string {
	var parts []string
	if tl := e.GetPromotedTimeline(); tl != 0 {
		parts = append(parts, fmt.Sprintf("timeline %d", tl))
	}
	if lsn := e.GetPromotedLsn(); lsn != 0 {
		parts = append(parts, "at "+formatLSN(lsn))
	}
	return strings.Join(parts, " ")
}

// dataLossDetail says how much data the failover lost and how sure that is; "" for an
// aborted event that never measured any.
func dataLossDetail(e *regentv1.FailoverEvent) string {
	if e.DataLossBytes == nil {
		switch {
		case openStep(e.GetStep()):
			return "unknown yet"
		case e.GetStep() == regentv1.FailoverStep_FAILOVER_STEP_ABORTED:
			return ""
		}
		return "unknown"
	}
	if e.GetDataLossExact() {
		if e.GetSwitchover() && e.GetFinalLsn() != 0 {
			return dataLoss(e) + ", exact (the target replayed the old primary's final LSN " + formatLSN(e.GetFinalLsn()) + " before its promotion)"
		}
		return dataLoss(e) + ", exact (measured after the old primary rejoined)"
	}
	var basis []string
	if lsn := e.GetOldPrimaryLsn(); lsn != 0 {
		basis = append(basis, "old primary last seen at "+formatLSN(lsn))
	}
	if lsn := e.GetPromotedLsn(); lsn != 0 {
		basis = append(basis, "promoted at "+formatLSN(lsn))
	}
	s := "~" + lossBytes(e.GetDataLossBytes()) + ", estimated"
	if len(basis) > 0 {
		s += " (" + strings.Join(basis, ", ") + ")"
	}
	return s + "; exact once the old primary rejoins"
}

// dnsDetail prints the DNS publish result; "" for an aborted event that never got there.
func dnsDetail(e *regentv1.FailoverEvent) string {
	switch {
	case e.GetPublished():
		return "published"
	case e.GetPublishError() != "":
		return "FAILED: " + e.GetPublishError()
	case reached(e, regentv1.FailoverStep_FAILOVER_STEP_PUBLISHED) || e.GetStep() == regentv1.FailoverStep_FAILOVER_STEP_COMPLETED:
		return "nothing published"
	case openStep(e.GetStep()):
		return "pending"
	}
	return ""
}

// dnsShort is dnsDetail for a table cell.
func dnsShort(e *regentv1.FailoverEvent) string {
	switch {
	case e.GetPublished():
		return "published"
	case e.GetPublishError() != "":
		return "FAILED"
	case openStep(e.GetStep()):
		return "pending"
	}
	return "-"
}

// printEventBlocks writes one block per event, oldest first, separated by blank lines:
//
//	EVENT 7  orders  pg-us (us-east) → pg-eu (eu-west)  completed in 1.6s, started 5m ago
//	  trigger    manual: drill
//	  steps      decided 11:55:00.0 → fenced +0.4s → promoted +1.1s → … → completed +1.6s
//	  fence      sql (old primary set read-only, its client backends terminated)
//	  promoted   pg-eu, timeline 4 at 16/B374D848
//	  data loss  ~18.0 KiB, estimated (…); exact once the old primary rejoins
//	  dns        published
//
// Lines with nothing to say (no fence yet, no abort reason, no notes) are left out.
func printEventBlocks(w io.Writer, events []*regentv1.FailoverEvent, now time.Time) error {
	var b strings.Builder
	line := func(label, text string) {
		if text != "" {
			fmt.Fprintf(&b, "  %-10s %s\n", label, text)
		}
	}
	for i, e := range events {
		if i > 0 {
			b.WriteByte('\n')
		}
		fmt.Fprintf(&b, "EVENT %d  %s  %s → %s  %s, started %s\n", e.GetId(), dash(e.GetCluster()),
			nodeAt(e.GetFromNode(), e.GetFromRegion()), nodeAt(e.GetToNode(), e.GetToRegion()), outcome(e),
			age(e.GetStartedAt(), now))
		line("trigger", trigger(e))
		line("steps", formatSteps(e, now))
		line("fence", fenceDetail(e))
		if p := promotedAt(e); p != "" {
			line("promoted", dash(e.GetToNode())+", "+p)
		}
		line("data loss", dataLossDetail(e))
		line("dns", dnsDetail(e))
		line("aborted", e.GetAbortReason())
		for j, n := range e.GetNotes() {
			label := ""
			if j == 0 {
				label = "notes"
			}
			fmt.Fprintf(&b, "  %-10s %s\n", label, n)
		}
	}
	_, err := io.WriteString(w, b.String())
	return writeErr(err)
}

// printClusterNotes writes, under a cluster's header in status, whether its automatic
// failover is paused, why the coordinator last declined to fail over, and each of its
// failovers still running.
func printClusterNotes(w io.Writer, c *regentv1.Cluster, events []*regentv1.FailoverEvent, now time.Time) {
	if c.GetPaused() {
		line := "automatic failover paused"
		if r := c.GetPauseReason(); r != "" {
			line += ": " + r
		}
		fmt.Fprintf(w, "%s; resume with: regent resume --cluster %s\n", line, c.GetName())
	}
	// A paused cluster's refusal usually just says so; the line above already did.
	if r := c.GetRefusal(); r != "" && !(c.GetPaused() && strings.HasPrefix(strings.ToLower(r), "paused")) {
		since := ""
		if set(c.GetRefusalAt()) {
			since = " since " + clock(c.GetRefusalAt().AsTime(), now, clockSecond)
		}
		fmt.Fprintf(w, "automatic failover declined%s: %s\n", since, r)
	}
	for _, e := range sortedEvents(events) {
		if e.GetCluster() != c.GetName() || !openStep(e.GetStep()) {
			continue
		}
		fmt.Fprintf(w, "FAILOVER %d RUNNING: %s → %s, at step %s, started %s\n", e.GetId(),
			nodeAt(e.GetFromNode(), e.GetFromRegion()), nodeAt(e.GetToNode(), e.GetToRegion()),
			stepName(e.GetStep()), age(e.GetStartedAt(), now))
		fmt.Fprintf(w, "  trigger: %s\n", trigger(e))
		fmt.Fprintf(w, "  steps:   %s\n", formatSteps(e, now))
		fmt.Fprintf(w, "  follow it with: regent events --cluster %s --watch\n", c.GetName())
	}
}

// eventChanges describes how a failover event changed from prev (nil when it is new) to cur,
// one line per change, each starting with its time and the event:
//
//	10:00:01.234 event 7 orders fenced (sql)
//
// Each newly committed step gives a line at the step's time. New notes, a new leader taking
// the saga over and a new data loss figure give lines at the time of the newest step in the
// same change, since a step commits its notes and figures with it, or else at now.
func eventChanges(prev, cur *regentv1.FailoverEvent, now time.Time) []string {
	var lines []string
	add := func(at time.Time, format string, a ...any) {
		lines = append(lines, fmt.Sprintf("%s event %d %s ", watchClock(at, now), cur.GetId(), dash(cur.GetCluster()))+
			fmt.Sprintf(format, a...))
	}
	stepAt := func(st *regentv1.StepTime) time.Time {
		if set(st.GetAt()) {
			return st.GetAt().AsTime()
		}
		return now
	}

	completed := false
	other := now // when the changes that are not steps happened
	step := func(st *regentv1.StepTime) {
		if st.GetStep() == regentv1.FailoverStep_FAILOVER_STEP_COMPLETED {
			completed = true
		}
		other = stepAt(st)
		add(other, "%s", stepChange(cur, st.GetStep()))
	}
	if len(cur.GetSteps()) > 0 {
		had := make(map[regentv1.FailoverStep]bool)
		for _, st := range prev.GetSteps() {
			had[st.GetStep()] = true
		}
		for _, st := range cur.GetSteps() {
			if !had[st.GetStep()] {
				step(st)
			}
		}
	} else {
		// No step times recorded: report the step the event is at.
		at := now
		if !openStep(cur.GetStep()) && set(cur.GetCompletedAt()) {
			at = cur.GetCompletedAt().AsTime()
		}
		if prev == nil {
			step(&regentv1.StepTime{Step: regentv1.FailoverStep_FAILOVER_STEP_DECIDED, At: cur.GetStartedAt()})
			if cur.GetStep() != regentv1.FailoverStep_FAILOVER_STEP_DECIDED {
				step(&regentv1.StepTime{Step: cur.GetStep(), At: timestamppb.New(at)})
			}
		} else if prev.GetStep() != cur.GetStep() {
			step(&regentv1.StepTime{Step: cur.GetStep(), At: timestamppb.New(at)})
		}
	}

	if prev != nil {
		if prev.GetTerm() != 0 && cur.GetTerm() != prev.GetTerm() {
			add(other, "saga taken over by the leader of term %d", cur.GetTerm())
		}
		if !completed && dataLoss(prev) != dataLoss(cur) {
			add(other, "%s", dataLossChange(cur))
		}
	}
	notes := cur.GetNotes()
	if n := len(prev.GetNotes()); n <= len(notes) {
		notes = notes[n:]
	}
	for _, n := range notes {
		add(other, "note: %s", n)
	}
	if len(lines) == 0 && prev != nil {
		add(now, "updated (step %s)", stepName(cur.GetStep()))
	}
	return lines
}

// stepChange prints what committing step s of e did, for a line of `events --watch`.
func stepChange(e *regentv1.FailoverEvent, s regentv1.FailoverStep) string {
	switch s {
	case regentv1.FailoverStep_FAILOVER_STEP_DECIDED:
		return fmt.Sprintf("decided: %s → %s; %s", nodeAt(e.GetFromNode(), e.GetFromRegion()),
			nodeAt(e.GetToNode(), e.GetToRegion()), trigger(e))
	case regentv1.FailoverStep_FAILOVER_STEP_FENCED:
		if m := e.GetFenceMethod(); m != "" {
			return "fenced (" + m + ")"
		}
		return "fenced"
	case regentv1.FailoverStep_FAILOVER_STEP_PROMOTED:
		if p := promotedAt(e); p != "" {
			return fmt.Sprintf("promoted %s (%s)", dash(e.GetToNode()), p)
		}
		return "promoted " + dash(e.GetToNode())
	case regentv1.FailoverStep_FAILOVER_STEP_REPOINTED:
		return "repointed the standbys to " + dash(e.GetToNode())
	case regentv1.FailoverStep_FAILOVER_STEP_PUBLISHED:
		switch {
		case e.GetPublished():
			return "published " + dash(e.GetToNode()) + " in DNS"
		case e.GetPublishError() != "":
			return "publish FAILED: " + e.GetPublishError()
		}
		return "published nothing (no DNS update)"
	case regentv1.FailoverStep_FAILOVER_STEP_COMPLETED:
		s := "completed"
		if d, ok := eventDuration(e); ok {
			s += " in " + formatDuration(d)
		}
		return s + "; data loss " + dataLoss(e)
	case regentv1.FailoverStep_FAILOVER_STEP_ABORTED:
		if r := e.GetAbortReason(); r != "" {
			return "aborted: " + r
		}
		return "aborted"
	}
	return stepName(s)
}

// dataLossChange prints a new data loss figure for a line of `events --watch`.
func dataLossChange(e *regentv1.FailoverEvent) string {
	switch {
	case e.DataLossBytes == nil:
		return "data loss unknown"
	case e.GetDataLossExact():
		return "data loss measured: " + dataLoss(e) + " (exact)"
	}
	return "data loss estimated: ~" + lossBytes(e.GetDataLossBytes())
}
