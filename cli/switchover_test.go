package cli

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// Switchover answers with the event the fake's failover response holds.
func (f *fakeServer) Switchover(_ context.Context, req *regentv1.SwitchoverRequest) (*regentv1.SwitchoverResponse, error) {
	if err := f.record("Switchover", req); err != nil {
		return nil, err
	}
	return &regentv1.SwitchoverResponse{Event: f.failover.GetEvent()}, nil
}

func switchoverEvent() *regentv1.FailoverEvent {
	ev := startedEvent()
	ev.Switchover, ev.TriggerReason = true, "switchover by alice"
	return ev
}

func TestSwitchoverRequests(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want *regentv1.SwitchoverRequest
	}{
		{[]string{"switchover", "--cluster", "orders", "--to", "pg-eu"}, &regentv1.SwitchoverRequest{Cluster: "orders", To: "pg-eu"}},
		{[]string{"switchover", "--cluster=orders", "--to", "pg-eu", "--timeout", "45s", "--reason", "kernel"},
			&regentv1.SwitchoverRequest{Cluster: "orders", To: "pg-eu", TimeoutMs: 45000, Reason: "kernel"}},
		{[]string{"--timeout", "20s", "switchover", "--cluster", "orders", "--to", "pg-eu"},
			&regentv1.SwitchoverRequest{Cluster: "orders", To: "pg-eu", TimeoutMs: 20000}},
	} {
		f := &fakeServer{failover: &regentv1.FailoverResponse{Event: switchoverEvent()}}
		r := run(t, start(t, f), tc.args...).mustSucceed(t)
		want := "switchover 8 of orders started: pg-us (us-east) → pg-eu (eu-west)\n" +
			"follow it with: regent events --cluster orders --watch\n"
		if r.stdout != want || r.stderr != "" {
			t.Errorf("%v: stdout %q stderr %q, want %q", tc.args, r.stdout, r.stderr, want)
		}
		got := f.got()
		if len(got) != 1 || got[0].method != "Switchover" || !proto.Equal(got[0].req, tc.want) {
			t.Errorf("%v: calls %v, want one Switchover %v", tc.args, got, tc.want)
		}
	}
}

func TestSwitchoverNeedsATarget(t *testing.T) {
	f := &fakeServer{failover: &regentv1.FailoverResponse{Event: switchoverEvent()}}
	r := run(t, start(t, f), "switchover", "--cluster", "orders")
	if r.code != ExitUsage || !strings.Contains(r.stderr, "--to NODE") || len(f.got()) != 0 {
		t.Errorf("exit %d stderr %q calls %v", r.code, r.stderr, f.got())
	}
}

// --wait follows the event to its end: completed prints the measured loss and exits 0,
// aborted prints the reason and exits 1.
func TestSwitchoverWait(t *testing.T) {
	done := func(step regentv1.FailoverStep) *regentv1.FailoverEvent {
		ev := switchoverEvent()
		loss := int64(0)
		ev.Steps = append(ev.Steps, &regentv1.StepTime{Step: regentv1.FailoverStep_FAILOVER_STEP_FENCED, At: ago(-300 * time.Millisecond)})
		ev.Step, ev.FenceMethod = step, "switchover"
		if step == regentv1.FailoverStep_FAILOVER_STEP_ABORTED {
			ev.AbortReason = "pg-eu did not replay the fenced primary's WAL end within the switchover timeout 3s"
			ev.Steps = append(ev.Steps, &regentv1.StepTime{Step: step, At: ago(-time.Second)})
			return ev
		}
		ev.DataLossBytes, ev.DataLossExact, ev.FinalLsn = &loss, true, 0x3000128
		for _, s := range []regentv1.FailoverStep{regentv1.FailoverStep_FAILOVER_STEP_PROMOTED, regentv1.FailoverStep_FAILOVER_STEP_REPOINTED,
			regentv1.FailoverStep_FAILOVER_STEP_PUBLISHED, regentv1.FailoverStep_FAILOVER_STEP_COMPLETED} {
			ev.Steps = append(ev.Steps, &regentv1.StepTime{Step: s, At: ago(-500 * time.Millisecond)})
		}
		return ev
	}
	watch := func(ev *regentv1.FailoverEvent) []*regentv1.WatchEvent {
		return []*regentv1.WatchEvent{
			{Index: 10, Kind: "snapshot", State: &regentv1.State{FailoverEvents: []*regentv1.FailoverEvent{switchoverEvent()}}},
			{Index: 11, Kind: "failover_event", Key: "8", FailoverEvent: ev},
		}
	}

	f := &fakeServer{failover: &regentv1.FailoverResponse{Event: switchoverEvent()}, watch: watch(done(regentv1.FailoverStep_FAILOVER_STEP_COMPLETED))}
	r := run(t, start(t, f), "switchover", "--cluster", "orders", "--to", "pg-eu", "--wait").mustSucceed(t)
	for _, s := range []string{"started", "fenced (switchover)", "promoted pg-eu",
		"switchover 8 of orders completed: pg-eu is the primary", "WAL ended at 0/3000128", "is the primary; data loss measured: 0 B (exact)", "decided → promoted in 500ms"} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("--wait output lacks %q:\n%s", s, r.stdout)
		}
	}

	f = &fakeServer{failover: &regentv1.FailoverResponse{Event: switchoverEvent()}, watch: watch(done(regentv1.FailoverStep_FAILOVER_STEP_ABORTED))}
	r = run(t, start(t, f), "switchover", "--cluster", "orders", "--to", "pg-eu", "--wait")
	if r.code != ExitError || !strings.Contains(r.stdout, "switchover 8 aborted: pg-eu did not replay") || !strings.Contains(r.stderr, "aborted") {
		t.Errorf("aborted: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
}
