package cli

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// startedEvent is what Failover answers: event 8 of orders, just decided.
func startedEvent() *regentv1.FailoverEvent {
	return &regentv1.FailoverEvent{
		Id: 8, Cluster: "orders", FromNode: "pg-us", FromRegion: "us-east", ToNode: "pg-eu", ToRegion: "eu-west",
		Step: regentv1.FailoverStep_FAILOVER_STEP_DECIDED, Manual: true, TriggerReason: "drill", StartedAt: ago(0),
		Steps: []*regentv1.StepTime{{Step: regentv1.FailoverStep_FAILOVER_STEP_DECIDED, At: ago(0)}},
	}
}

func TestFailoverRequests(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want *regentv1.FailoverRequest
	}{
		{[]string{"failover", "--cluster", "orders"}, &regentv1.FailoverRequest{Cluster: "orders"}},
		{[]string{"failover", "--cluster=orders", "--to", "pg-eu", "--force", "--reason", "region drill"},
			&regentv1.FailoverRequest{Cluster: "orders", To: "pg-eu", Force: true, Reason: "region drill"}},
		{[]string{"--consistent", "failover", "--reason=drill", "--to=pg-ap", "--cluster", "orders"},
			&regentv1.FailoverRequest{Cluster: "orders", To: "pg-ap", Reason: "drill"}},
		{[]string{"failover", "--cluster", "orders", "--force=false"}, &regentv1.FailoverRequest{Cluster: "orders"}},
	} {
		f := &fakeServer{failover: &regentv1.FailoverResponse{Event: startedEvent()}}
		r := run(t, start(t, f), tc.args...).mustSucceed(t)
		want := "failover 8 of orders started: pg-us (us-east) → pg-eu (eu-west); " +
			"follow it with: regent events --cluster orders --watch\n"
		if r.stdout != want || r.stderr != "" {
			t.Errorf("%v: stdout %q stderr %q, want %q", tc.args, r.stdout, r.stderr, want)
		}
		got := f.got()
		if len(got) != 1 || got[0].method != "Failover" {
			t.Fatalf("%v: calls = %v, want one Failover", tc.args, got)
		}
		if !proto.Equal(got[0].req, tc.want) {
			t.Errorf("%v: sent %v, want %v", tc.args, got[0].req, tc.want)
		}
	}
}

func TestFailoverJSON(t *testing.T) {
	f := &fakeServer{failover: &regentv1.FailoverResponse{Event: startedEvent()}}
	r := run(t, start(t, f), "failover", "--cluster", "orders", "-o", "json").mustSucceed(t)
	m := jsonObject(t, r.stdout)
	hasKeys(t, "failover", m, "event")
	hasKeys(t, "failover event", m["event"].(map[string]any), "id", "cluster", "from_node", "to_node", "step",
		"manual", "force", "steps", "fence_method", "published", "publish_error", "notes", "abort_reason")
	if ev := m["event"].(map[string]any); ev["id"] != "8" || ev["step"] != "FAILOVER_STEP_DECIDED" {
		t.Errorf("event = %v", ev)
	}
}

func TestPauseResume(t *testing.T) {
	for _, tc := range []struct {
		name   string
		paused string // the server's pause reason
		args   []string
		want   proto.Message
		out    string
	}{
		{"pause with reason", "", []string{"pause", "--cluster", "orders", "--reason", "disk replacement"},
			&regentv1.PauseRequest{Cluster: "orders", Reason: "disk replacement"},
			"automatic failover of orders paused (disk replacement)\n"},
		{"pause without reason", "", []string{"pause", "--cluster=orders"},
			&regentv1.PauseRequest{Cluster: "orders"},
			"automatic failover of orders paused\n"},
		{"the server's reason wins", "alice: disk replacement", []string{"pause", "--reason", "disk replacement", "--cluster", "orders"},
			&regentv1.PauseRequest{Cluster: "orders", Reason: "disk replacement"},
			"automatic failover of orders paused (alice: disk replacement)\n"},
		{"resume", "", []string{"resume", "--cluster", "orders"},
			&regentv1.ResumeRequest{Cluster: "orders"},
			"automatic failover of orders resumed\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeServer{paused: tc.paused}
			r := run(t, start(t, f), tc.args...).mustSucceed(t)
			if r.stdout != tc.out || r.stderr != "" {
				t.Errorf("stdout %q stderr %q, want %q", r.stdout, r.stderr, tc.out)
			}
			got := f.got()
			if len(got) != 1 || !proto.Equal(got[0].req, tc.want) {
				t.Errorf("calls = %v, want one %v", got, tc.want)
			}
		})
	}
	for _, args := range [][]string{{"pause", "--cluster", "orders"}, {"resume", "--cluster", "orders"}} {
		r := run(t, start(t, &fakeServer{}), append(args, "-o", "json")...).mustSucceed(t)
		hasKeys(t, args[0], jsonObject(t, r.stdout), "cluster")
	}
}

func TestFailoverUsageNamesTheCommand(t *testing.T) {
	f := &fakeServer{}
	r := run(t, start(t, f), "failover", "--to", "pg-eu")
	if r.code != ExitUsage {
		t.Fatalf("exit %d, want %d", r.code, ExitUsage)
	}
	want := "regent: failover needs --cluster C\n" +
		"usage: regent failover --cluster C [--to NODE] [--force] [--reason TEXT]\n" +
		"Run 'regent help failover' for its flags.\n"
	if r.stderr != want {
		t.Errorf("stderr = %q, want %q", r.stderr, want)
	}
	if got := f.got(); len(got) != 0 {
		t.Errorf("a usage error reached the server: %v", got)
	}
}

func TestFailoverHelp(t *testing.T) {
	for _, args := range [][]string{{"help", "failover"}, {"failover", "-h"}} {
		r := run(t, "", args...).mustSucceed(t)
		for _, want := range []string{
			"Usage: regent failover --cluster C [--to NODE] [--force] [--reason TEXT]",
			"--cluster cluster", "--to node", "--reason text",
			"--force", "skip the lag gate", "never skips the fence",
		} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("%v: help lacks %q:\n%s", args, want, r.stdout)
			}
		}
	}
	for _, tc := range []struct {
		args []string
		want []string
		not  []string
	}{
		{[]string{"help", "pause"}, []string{"Usage: regent pause --cluster C [--reason TEXT]", "--reason text"}, nil},
		{[]string{"resume", "--help"}, []string{"Usage: regent resume --cluster C", "--cluster cluster"}, []string{"--reason"}},
		{[]string{"help", "events"}, []string{"Usage: regent events [--cluster C] [--watch]", "--watch", "Ctrl-C"}, nil},
	} {
		r := run(t, "", tc.args...).mustSucceed(t)
		for _, w := range tc.want {
			if !strings.Contains(r.stdout, w) {
				t.Errorf("%v: help lacks %q:\n%s", tc.args, w, r.stdout)
			}
		}
		for _, w := range tc.not {
			if strings.Contains(r.stdout, w) {
				t.Errorf("%v: help has %q:\n%s", tc.args, w, r.stdout)
			}
		}
	}
}

func TestFailoverServerErrors(t *testing.T) {
	running := "a failover is already running: event 7 of orders at step fenced"
	for _, tc := range []struct {
		err  error
		args []string
		want string
	}{
		{status.Error(codes.FailedPrecondition, running), []string{"failover", "--cluster", "orders"},
			"regent: fail over orders: " + running + "\n" +
				"hint: see the cluster with: regent status; follow a running failover with: regent events --cluster orders --watch\n"},
		{status.Error(codes.NotFound, `cluster "nope" not found`), []string{"failover", "--cluster", "nope", "--to", "x"},
			"regent: fail over nope: cluster \"nope\" not found\nhint: list the clusters with: regent cluster list\n"},
		{status.Error(codes.NotFound, `cluster "nope" not found`), []string{"pause", "--cluster", "nope"},
			"regent: pause nope: cluster \"nope\" not found\nhint: list the clusters with: regent cluster list\n"},
		{status.Error(codes.NotFound, `cluster "nope" not found`), []string{"resume", "--cluster", "nope"},
			"regent: resume nope: cluster \"nope\" not found\nhint: list the clusters with: regent cluster list\n"},
		{status.Error(codes.InvalidArgument, `to: "pg-xx" is not a node of orders`), []string{"failover", "--cluster", "orders", "--to", "pg-xx"},
			"regent: fail over orders: invalid argument: to: \"pg-xx\" is not a node of orders\n"},
		{status.Error(codes.Unavailable, "no leader"), []string{"pause", "--cluster", "orders"},
			"regent: pause orders: no leader\nhint: is a regent agent running at "},
	} {
		f := &fakeServer{err: tc.err}
		r := run(t, start(t, f), tc.args...)
		if r.code != ExitError {
			t.Errorf("%v: exit %d, want %d", tc.args, r.code, ExitError)
		}
		if !strings.HasPrefix(r.stderr, tc.want) {
			t.Errorf("%v: stderr = %q, want it to start with %q", tc.args, r.stderr, tc.want)
		}
		if r.stdout != "" {
			t.Errorf("%v: stdout = %q, want nothing", tc.args, r.stdout)
		}
	}
}

// runningState is cannedState with failover 8 of orders under way, fenced by SQL.
func runningState() *regentv1.GetStateResponse {
	st := cannedState()
	ev := startedEvent()
	ev.StartedAt = ago(3 * time.Second)
	ev.Force = true
	ev.TriggerReason = "region drill"
	ev.Step = regentv1.FailoverStep_FAILOVER_STEP_FENCED
	ev.FenceMethod = "sql"
	ev.Steps = []*regentv1.StepTime{
		{Step: regentv1.FailoverStep_FAILOVER_STEP_DECIDED, At: ago(3 * time.Second)},
		{Step: regentv1.FailoverStep_FAILOVER_STEP_FENCED, At: ago(2600 * time.Millisecond)},
	}
	st.FailoverEvents = append(st.FailoverEvents, ev)
	for _, c := range st.GetClusters() {
		if c.GetName() == "orders" {
			c.Refusal, c.RefusalAt = "", nil
		}
	}
	return st
}

func TestStatusRunningFailover(t *testing.T) {
	f := &fakeServer{state: runningState()}
	r := run(t, start(t, f), "status").mustSucceed(t)
	golden(t, "status_running.txt", r.stdout)
	for _, want := range []string{
		"CLUSTER orders (primary pg-us, spec version 2)\n" +
			"FAILOVER 8 RUNNING: pg-us (us-east) → pg-eu (eu-west), at step fenced, started 3s ago\n" +
			"  trigger: manual, forced (lag gate skipped): region drill\n" +
			"  steps:   decided 11:59:57.0 → fenced +0.4s\n" +
			"  follow it with: regent events --cluster orders --watch\n",
		"FAILOVER EVENTS (last 5 of 8",
		"8   orders   pg-us (us-east)  pg-eu (eu-west)  fenced",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("status lacks %q:\n%s", want, r.stdout)
		}
	}
	if strings.Contains(r.stdout, "declined") {
		t.Errorf("status shows a refusal no cluster has:\n%s", r.stdout)
	}
}

func TestStatusPauseAndRefusal(t *testing.T) {
	f := &fakeServer{state: cannedState()}
	r := run(t, start(t, f), "status").mustSucceed(t)
	for _, want := range []string{
		"CLUSTER billing (primary b1, spec version 1, paused)\n" +
			"automatic failover paused: disk replacement on b1 (alice); resume with: regent resume --cluster billing\n" +
			"NODE ",
		"CLUSTER orders (primary pg-us, spec version 2)\n" +
			"automatic failover declined since 11:59:57: no candidate: pg-eu lag 40.0 MiB > max_lag_on_failover 16.0 MiB\n" +
			"NODE ",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("status lacks %q:\n%s", want, r.stdout)
		}
	}
	if strings.Contains(r.stdout, "RUNNING") {
		t.Errorf("status shows a running failover where none is:\n%s", r.stdout)
	}

	// A refusal of another day carries its date; a paused cluster's refusal other than
	// "paused" is shown too.
	st := cannedState()
	for _, c := range st.GetClusters() {
		c.Paused, c.PauseReason = true, ""
		c.Refusal, c.RefusalAt = "cooldown: last failover 2m ago", ago(25*time.Hour)
	}
	r = run(t, start(t, &fakeServer{state: st}), "status").mustSucceed(t)
	for _, want := range []string{
		"automatic failover paused; resume with: regent resume --cluster orders\n" +
			"automatic failover declined since 2026-02-28 11:00:00: cooldown: last failover 2m ago\n",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("status lacks %q:\n%s", want, r.stdout)
		}
	}
}

// watchUpdates is what the Watch stream sends while failover 8 of orders runs: its steps
// one change at a time, with unrelated changes (a cluster, another cluster's event) mixed in,
// then a deleted event and a snapshot.
func watchUpdates() []*regentv1.WatchEvent {
	at := func(d time.Duration) *regentv1.StepTime { return &regentv1.StepTime{At: ago(d)} }
	step := func(s regentv1.FailoverStep, d time.Duration) *regentv1.StepTime {
		st := at(d)
		st.Step = s
		return st
	}
	v := []*regentv1.FailoverEvent{startedEvent()}
	v[0].StartedAt = ago(2 * time.Second)
	v[0].Force = true
	v[0].Term = 4
	v[0].Steps = []*regentv1.StepTime{step(regentv1.FailoverStep_FAILOVER_STEP_DECIDED, 2*time.Second)}
	next := func(change func(e *regentv1.FailoverEvent)) *regentv1.FailoverEvent {
		e := proto.Clone(v[len(v)-1]).(*regentv1.FailoverEvent)
		change(e)
		v = append(v, e)
		return e
	}
	fenced := next(func(e *regentv1.FailoverEvent) {
		e.Step, e.FenceMethod = regentv1.FailoverStep_FAILOVER_STEP_FENCED, "sql"
		e.Steps = append(e.Steps, step(regentv1.FailoverStep_FAILOVER_STEP_FENCED, 1766*time.Millisecond))
		e.Notes = append(e.Notes, "sql: pg-us set read-only, 3 backends terminated")
	})
	promoted := next(func(e *regentv1.FailoverEvent) {
		e.Step, e.PromotedLsn, e.PromotedTimeline = regentv1.FailoverStep_FAILOVER_STEP_PROMOTED, 0x16_B4000000, 4
		e.DataLossBytes, e.OldPrimaryLsn = proto.Int64(1024), 0x16_B4000400
		e.Steps = append(e.Steps, step(regentv1.FailoverStep_FAILOVER_STEP_PROMOTED, 1100*time.Millisecond))
	})
	done := next(func(e *regentv1.FailoverEvent) { // three steps committed between two reads
		e.Step, e.Published = regentv1.FailoverStep_FAILOVER_STEP_COMPLETED, true
		e.CompletedAt = ago(200 * time.Millisecond)
		e.Steps = append(e.Steps, step(regentv1.FailoverStep_FAILOVER_STEP_REPOINTED, 800*time.Millisecond),
			step(regentv1.FailoverStep_FAILOVER_STEP_PUBLISHED, 500*time.Millisecond),
			step(regentv1.FailoverStep_FAILOVER_STEP_COMPLETED, 200*time.Millisecond))
	})
	measured := next(func(e *regentv1.FailoverEvent) { e.DataLossBytes, e.DataLossExact = proto.Int64(512), true })
	takenOver := next(func(e *regentv1.FailoverEvent) { e.Term = 5 })

	billing := &regentv1.FailoverEvent{Id: 9, Cluster: "billing", Step: regentv1.FailoverStep_FAILOVER_STEP_DECIDED,
		Steps: []*regentv1.StepTime{step(regentv1.FailoverStep_FAILOVER_STEP_DECIDED, time.Second)}}
	snap := cannedState()
	var events []*regentv1.FailoverEvent
	for _, e := range snap.GetFailoverEvents() {
		switch e.GetId() {
		case 3: // deleted below
			continue
		case 7:
			e.Notes = append(e.Notes, "pg-eu rejoined as a standby of pg-us")
		}
		events = append(events, e)
	}
	events = append(events, takenOver, billing)

	ev := func(index uint64, e *regentv1.FailoverEvent) *regentv1.WatchEvent {
		return &regentv1.WatchEvent{Index: index, Kind: "failover_event", Key: "8", FailoverEvent: e}
	}
	return []*regentv1.WatchEvent{
		ev(1235, v[0]),
		{Index: 1236, Kind: "cluster", Key: "orders", Cluster: &regentv1.Cluster{Name: "orders"}},
		{Index: 1237, Kind: "failover_event", Key: "9", FailoverEvent: billing},
		ev(1238, fenced),
		ev(1239, fenced), // the same version again: nothing to print
		ev(1240, promoted),
		ev(1241, done),
		ev(1242, measured),
		ev(1243, takenOver),
		{Index: 1244, Kind: "failover_event", Key: "3", Deleted: true},
		{Index: 1245, Kind: "snapshot", State: &regentv1.State{Clusters: snap.GetClusters(), FailoverEvents: events}},
	}
}

func TestEventsWatch(t *testing.T) {
	f := &fakeServer{state: cannedState(), watch: watchUpdates()}
	addr := start(t, f)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errOut syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- runWith(ctx, []string{"--addr", addr, "events", "--cluster", "orders", "--watch"}, &out, &errOut,
			func(string) string { return "" }, func() time.Time { return testNow })
	}()

	const last = "event 7 orders note: pg-eu rejoined as a standby of pg-us\n" // the snapshot's change
	deadline := time.Now().Add(10 * time.Second)
	for !strings.HasSuffix(out.String(), last) {
		if time.Now().After(deadline) {
			t.Fatalf("events --watch printed %q, want it to end with %q (stderr %q)", out.String(), last, errOut.String())
		}
		select {
		case code := <-done:
			t.Fatalf("events --watch ended early with %d: stdout %q stderr %q", code, out.String(), errOut.String())
		case <-time.After(10 * time.Millisecond): // poll interval
		}
	}
	cancel()
	select {
	case code := <-done:
		if code != ExitOK || errOut.String() != "" {
			t.Errorf("after cancel: exit %d, stderr %q; want 0 and nothing", code, errOut.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("events --watch did not return after its context was cancelled")
	}

	golden(t, "events_watch.txt", out.String())
	for _, want := range []string{
		"EVENT 7  orders  pg-eu (eu-west) → pg-us (us-east)  completed in 1.4s, started 5m ago\n",
		"\nfollowing failover events for cluster orders after index 1234 (Ctrl-C to stop)\n",
		"11:59:58.000 event 8 orders decided: pg-us (us-east) → pg-eu (eu-west); manual, forced (lag gate skipped): drill\n",
		"11:59:58.234 event 8 orders fenced (sql)\n",
		"11:59:58.234 event 8 orders note: sql: pg-us set read-only, 3 backends terminated\n", // committed with the fence
		"11:59:58.900 event 8 orders data loss estimated: ~1.0 KiB\n",
		"11:59:58.900 event 8 orders promoted pg-eu (timeline 4 at 16/B4000000)\n",
		"11:59:59.200 event 8 orders repointed the standbys to pg-eu\n",
		"11:59:59.500 event 8 orders published pg-eu in DNS\n",
		"11:59:59.800 event 8 orders completed in 1.8s; data loss ~1.0 KiB (est.)\n",
		"12:00:00.000 event 8 orders data loss measured: 512 B (exact)\n",
		"12:00:00.000 event 8 orders saga taken over by the leader of term 5\n",
		"12:00:00.000 event 3 orders deleted\n",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("events --watch lacks %q:\n%s", want, out.String())
		}
	}
	for _, unwanted := range []string{"billing", "event 8 orders updated", "event 6", "event 1 "} {
		if strings.Contains(out.String(), unwanted) {
			t.Errorf("events --watch printed %q:\n%s", unwanted, out.String())
		}
	}
	if n := strings.Count(out.String(), "fenced (sql)"); n != 1 {
		t.Errorf("the fenced step was printed %d times, want once", n)
	}

	got := f.got()
	if len(got) != 2 || got[0].method != "ListFailoverEvents" || got[1].method != "Watch" {
		t.Fatalf("calls = %v, want ListFailoverEvents then Watch", got)
	}
	if c := got[0].req.(*regentv1.ListFailoverEventsRequest).GetCluster(); c != "orders" {
		t.Errorf("list sent cluster %q, want orders", c)
	}
	if from := got[1].req.(*regentv1.WatchRequest).GetFromIndex(); from != 1234 {
		t.Errorf("watch from index %d, want 1234 (the list's index)", from)
	}
}

func TestEventsWatchJSON(t *testing.T) {
	f := &fakeServer{state: cannedState(), watch: watchUpdates(), watchEOF: true}
	r := run(t, start(t, f), "events", "--watch", "-o", "json").mustSucceed(t)
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	// The list, then: 8 decided, 9 (no filter), 8 fenced, promoted, completed, measured,
	// taken over, 3 deleted, and 7 from the snapshot.
	if len(lines) != 10 {
		t.Fatalf("want 10 lines, got %d:\n%s", len(lines), r.stdout)
	}
	hasKeys(t, "line 1", jsonObject(t, lines[0]), "failover_events", "index")
	var keys []string
	for i, l := range lines[1:] {
		m := jsonObject(t, l)
		hasKeys(t, "change", m, "index", "kind", "key", "deleted", "failover_event")
		if m["kind"] != "failover_event" {
			t.Errorf("line %d: kind %v, want failover_event", i+2, m["kind"])
		}
		keys = append(keys, m["key"].(string))
	}
	if got, want := strings.Join(keys, " "), "8 9 8 8 8 8 8 3 7"; got != want {
		t.Errorf("keys = %s, want %s", got, want)
	}
	if m := jsonObject(t, lines[8]); m["deleted"] != true {
		t.Errorf("the deletion of event 3 = %v", m)
	}
}

func TestEventsWatchStopsOnCancelWhenEmpty(t *testing.T) {
	f := &fakeServer{state: &regentv1.GetStateResponse{Index: 5}}
	addr := start(t, f)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errOut syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- runWith(ctx, []string{"--addr", addr, "events", "--watch"}, &out, &errOut,
			func(string) string { return "" }, func() time.Time { return testNow })
	}()
	want := "no failover events\n\nfollowing failover events after index 5 (Ctrl-C to stop)\n"
	deadline := time.Now().Add(10 * time.Second)
	for out.String() != want || len(f.got()) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("events --watch printed %q, want %q; calls %v", out.String(), want, f.got())
		}
		select {
		case code := <-done:
			t.Fatalf("events --watch ended early with %d: stderr %q", code, errOut.String())
		case <-time.After(10 * time.Millisecond): // poll interval
		}
	}
	cancel()
	select {
	case code := <-done:
		if code != ExitOK || errOut.String() != "" {
			t.Errorf("after cancel: exit %d, stderr %q", code, errOut.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("events --watch did not return after its context was cancelled")
	}
}

func TestEventChangesWithoutStepTimes(t *testing.T) {
	prev := &regentv1.FailoverEvent{Id: 4, Cluster: "orders", FromNode: "a", ToNode: "b", StartedAt: ago(time.Second),
		Step: regentv1.FailoverStep_FAILOVER_STEP_PROMOTED}
	cur := proto.Clone(prev).(*regentv1.FailoverEvent)
	cur.Step, cur.AbortReason = regentv1.FailoverStep_FAILOVER_STEP_ABORTED, "pre_promote vetoed"
	cur.CompletedAt = ago(100 * time.Millisecond)
	got := strings.Join(eventChanges(prev, cur, testNow), "\n")
	if want := "11:59:59.900 event 4 orders aborted: pre_promote vetoed"; got != want {
		t.Errorf("changes = %q, want %q", got, want)
	}

	// Seen for the first time: its decision, then where it is.
	got = strings.Join(eventChanges(nil, prev, testNow), "\n")
	want := "11:59:59.000 event 4 orders decided: a → b; automatic\n" +
		"12:00:00.000 event 4 orders promoted b"
	if got != want {
		t.Errorf("changes = %q, want %q", got, want)
	}

	// A change the CLI has no words for still gives a line.
	cur = proto.Clone(prev).(*regentv1.FailoverEvent)
	cur.ToRegion = "eu-west"
	got = strings.Join(eventChanges(prev, cur, testNow), "\n")
	if want := "12:00:00.000 event 4 orders updated (step promoted)"; got != want {
		t.Errorf("changes = %q, want %q", got, want)
	}
}

func TestEventChangeWording(t *testing.T) {
	e := &regentv1.FailoverEvent{ToNode: "pg-eu"}
	for _, tc := range []struct {
		change func()
		step   regentv1.FailoverStep
		want   string
	}{
		{func() {}, regentv1.FailoverStep_FAILOVER_STEP_FENCED, "fenced"},
		{func() { e.FenceMethod = "lease" }, regentv1.FailoverStep_FAILOVER_STEP_FENCED, "fenced (lease)"},
		{func() {}, regentv1.FailoverStep_FAILOVER_STEP_PROMOTED, "promoted pg-eu"},
		{func() {}, regentv1.FailoverStep_FAILOVER_STEP_PUBLISHED, "published nothing (no DNS update)"},
		{func() { e.PublishError = "NOTAUTH" }, regentv1.FailoverStep_FAILOVER_STEP_PUBLISHED, "publish FAILED: NOTAUTH"},
		{func() {}, regentv1.FailoverStep_FAILOVER_STEP_COMPLETED, "completed; data loss unknown"},
		{func() {}, regentv1.FailoverStep_FAILOVER_STEP_ABORTED, "aborted"},
	} {
		tc.change()
		if got := stepChange(e, tc.step); got != tc.want {
			t.Errorf("stepChange(%v) = %q, want %q", tc.step, got, tc.want)
		}
	}
}

func TestEventDetails(t *testing.T) {
	running := &regentv1.FailoverEvent{Id: 2, Cluster: "c", Step: regentv1.FailoverStep_FAILOVER_STEP_PROMOTED,
		StartedAt: ago(time.Minute), Steps: []*regentv1.StepTime{
			{Step: regentv1.FailoverStep_FAILOVER_STEP_DECIDED, At: ago(time.Minute)},
			{Step: regentv1.FailoverStep_FAILOVER_STEP_FENCED, At: ago(time.Minute + time.Second)}, // a leader's clock behind
			{Step: regentv1.FailoverStep_FAILOVER_STEP_PROMOTED, At: ago(-5 * time.Minute)},
		}}
	for _, tc := range []struct{ got, want string }{
		{outcome(running), "RUNNING, at step promoted"},
		{formatSteps(running, testNow), "decided 11:59:00.0 → fenced -1.0s → promoted +6m"},
		{dataLossDetail(running), "unknown yet"},
		{dnsDetail(running), "pending"},
		{dnsShort(running), "pending"},
		{trigger(running), "automatic"},
		{fenceDetail(&regentv1.FailoverEvent{FenceMethod: "stonith"}), "stonith"},
		{formatOffset(400 * time.Millisecond), "+0.4s"},
		{formatOffset(75 * time.Second), "+1m15s"},
		{clock(testNow.Add(-time.Hour), testNow.In(time.FixedZone("X", 3600)), clockSecond), "12:00:00"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}

func TestEventUpdatesIgnoresOthers(t *testing.T) {
	e7 := &regentv1.FailoverEvent{Id: 7, Cluster: "orders", Step: regentv1.FailoverStep_FAILOVER_STEP_FENCED}
	known := map[uint64]*regentv1.FailoverEvent{7: e7}
	for _, ev := range []*regentv1.WatchEvent{
		{Index: 2, Kind: "failover_event", Key: "7"},                                                           // no payload: not a deletion
		{Index: 3, Kind: "failover_event", Key: "9", Deleted: true},                                            // never seen
		{Index: 4, Kind: "failover_event", Key: "7", FailoverEvent: proto.Clone(e7).(*regentv1.FailoverEvent)}, // unchanged
		{Index: 5, Kind: "failover_event", Key: "10", FailoverEvent: &regentv1.FailoverEvent{Id: 10, Cluster: "billing"}},
		{Index: 6, Kind: "channel", Key: "1", Channel: &regentv1.ReplicationChannel{Id: 1, Cluster: "orders"}},
		{Index: 7, Kind: "snapshot", State: &regentv1.State{FailoverEvents: []*regentv1.FailoverEvent{
			e7, {Id: 11, Cluster: "billing"}}}},
	} {
		if got := eventUpdates(ev, "orders", known); len(got) != 0 {
			t.Errorf("index %d: updates %v, want none", ev.GetIndex(), got)
		}
	}
	if len(known) != 1 || known[7] == nil {
		t.Errorf("known = %v, want event 7 only", known)
	}
}
