package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestStat(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want Stat
	}{
		{[]float64{5}, Stat{N: 1, Min: 5, Median: 5, P90: 5, Max: 5}},
		{[]float64{3, 1, 2}, Stat{N: 3, Min: 1, Median: 2, P90: 3, Max: 3}},
		{[]float64{10, 9, 8, 7, 6, 5, 4, 3, 2, 1}, Stat{N: 10, Min: 1, Median: 5.5, P90: 9, Max: 10}},
	} {
		if got := stat(tc.in); got != tc.want {
			t.Errorf("stat(%v) = %+v; want %+v", tc.in, got, tc.want)
		}
	}
}

func TestSummaryAndGoalSkipFailedTrials(t *testing.T) {
	trials := []Trial{
		{Trial: 1, OK: true, From: "pg-us", To: "pg-eu", Ms: map[string]float64{mDecision: 1800, mFirstWrite: 3900}},
		{Trial: 2, OK: false, Error: "boom", From: "pg-us", Ms: map[string]float64{mDecision: 60000}},
		{Trial: 3, OK: true, From: "pg-us", To: "pg-ap", Ms: map[string]float64{mDecision: 2000, mFirstWrite: 4100}},
	}
	s := summarise(trials)
	if s[mDecision].N != 2 || s[mDecision].Max != 2000 || s[mFirstWrite].Median != 4000 {
		t.Fatalf("summary %+v", s)
	}
	var out bytes.Buffer
	printReport(&out, Report{Trials: trials, Summary: s, FailedTrials: 1, FloorMs: 3500, GoalMs: 4500, GoalMet: true,
		Policy: map[string]any{"down_after_ms": int64(1500), "lease_ttl_ms": int64(2000)}})
	for _, want := range []string{"FAILED: boom", "floor (down_after + lease_ttl × (1 + drift)): 3.50s", "met (median 4.00s, 0.50s over the floor)", "first_write  2"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
}
