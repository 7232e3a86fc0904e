package dnstest

import (
	"strings"
	"testing"
)

func TestProfilesEnforceNamed(t *testing.T) {
	for _, tc := range []struct {
		profiles string
		want     bool
	}{
		{"", false},
		{"/usr/bin/man (enforce)\nnamed (enforce)\n", true},
		{"/usr/sbin/named (enforce)\n", true},
		{"named (complain)\n", false},
		{"unnamed (enforce)\nnamed-checkconf (enforce)\n", false},
	} {
		if got := profilesEnforceNamed(tc.profiles); got != tc.want {
			t.Errorf("profilesEnforceNamed(%q) = %v; want %v", tc.profiles, got, tc.want)
		}
	}
}

func TestOptionsWithDefaults(t *testing.T) {
	o, err := Options{}.withDefaults()
	if err != nil || o.Zone != "example.test." || o.KeyName != "regent-key" || o.Algorithm != "hmac-sha256" {
		t.Fatalf("defaults: %+v, %v", o, err)
	}
	for _, bad := range []Options{
		{Zone: "."},
		{Zone: "a..b"},
		{KeyName: `evil"; };`},
		{Zone: `a"b.test`},
		{Algorithm: "hmac-md5"},
	} {
		if _, err := bad.withDefaults(); err == nil {
			t.Errorf("%+v: no error", bad)
		}
	}
}

func TestTail(t *testing.T) {
	if got := tail("short", 100); got != "short" {
		t.Errorf("tail of a short log = %q", got)
	}
	got := tail("line one\nline two\nline three\n", 14)
	if !strings.HasPrefix(got, "...\n") || !strings.HasSuffix(got, "line three\n") || strings.Contains(got, "two") {
		t.Errorf("tail = %q; want the last whole lines", got)
	}
}
