package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDNSKeys(t *testing.T) {
	dir := t.TempDir()
	const secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA=="
	keyFile := filepath.Join(dir, "key")
	if err := os.WriteFile(keyFile, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	loose := filepath.Join(dir, "loose")
	if err := os.WriteFile(loose, []byte(secret), 0o644); err != nil {
		t.Fatal(err)
	}
	notB64 := filepath.Join(dir, "notb64")
	if err := os.WriteFile(notB64, []byte("not base64 !!"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Parse([]byte(good+"dns_keys:\n  regent-key: {secret_file: "+keyFile+"}\n"), "w.yaml")
	if err != nil {
		t.Fatal(err)
	}
	k := c.DNSKeys["regent-key"]
	if k.Algorithm != "hmac-sha256" {
		t.Errorf("default algorithm %q", k.Algorithm)
	}
	if s, err := k.Secret(); err != nil || s != secret {
		t.Errorf("Secret() = %q, %v", s, err)
	}
	for _, text := range []string{k.String(), k.GoString()} {
		if strings.Contains(text, secret) {
			t.Errorf("String leaks the secret: %s", text)
		}
	}
	cases := []struct{ name, yaml, want string }{
		{"bad algorithm", "dns_keys:\n  k: {algorithm: md5, secret_file: " + keyFile + "}\n", "w.yaml:10: dns_keys.k: algorithm \"md5\""},
		{"missing file", "dns_keys:\n  k: {secret_file: /nonexistent}\n", "does not exist"},
		{"loose mode", "dns_keys:\n  k: {secret_file: " + loose + "}\n", "chmod 600"},
		{"not base64", "dns_keys:\n  k: {secret_file: " + notB64 + "}\n", "base64"},
		{"no file", "dns_keys:\n  k: {algorithm: hmac-sha256}\n", "secret_file is required"},
		{"unknown key", "dns_keys:\n  k: {secret: abc}\n", "unknown key \"secret\""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(good+tc.yaml), "w.yaml")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error leaks the secret: %v", err)
			}
		})
	}
}
