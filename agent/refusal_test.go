package agent

import "testing"

func TestRefusalKindIgnoresFigures(t *testing.T) {
	same := [][2]string{
		{"keeper restarting the primary in place (0.8s of primary_start_timeout 30s)", "keeper restarting the primary in place (12.4s of primary_start_timeout 30s)"},
		{"pg-eu lags 17 MB (max_lag_on_failover 16 MB)", "pg-eu lags 19 MB (max_lag_on_failover 16 MB)"},
	}
	for _, p := range same {
		if refusalKind(p[0]) != refusalKind(p[1]) {
			t.Errorf("%q and %q are one kind of refusal", p[0], p[1])
		}
	}
	if refusalKind("cluster is paused") == refusalKind("no candidate") || refusalKind("no candidate") == refusalKind("") {
		t.Error("different reasons must differ")
	}
}
