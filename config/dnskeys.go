package config

import (
	"encoding/base64"
	"fmt"
	"io"
	"sort"
	"strings"
)

// DNSKey is a TSIG key the witness signs DNS updates with; the cluster spec names it
// (dns.tsig_key) and only the witnesses hold its secret.
type DNSKey struct {
	// Algorithm is hmac-sha256 (default), hmac-sha512 or hmac-sha1.
	Algorithm string `yaml:"algorithm"`
	// SecretFile holds the base64 secret (as in a BIND key statement), readable by its owner
	// only (chmod 600).
	SecretFile string `yaml:"secret_file"`
}

// dnsAlgorithms are the TSIG algorithms regent signs with.
var dnsAlgorithms = []string{"hmac-sha256", "hmac-sha512", "hmac-sha1"}

// Secret reads and checks the key's secret. The secret never appears in errors.
func (k DNSKey) Secret() (string, error) {
	f, err := openPrivateFile(k.SecretFile, "secret_file", "the key's base64 secret on one line")
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 4096))
	if err != nil {
		return "", fmt.Errorf("read %s: %w", k.SecretFile, err)
	}
	secret := strings.TrimSpace(string(b))
	if secret == "" {
		return "", fmt.Errorf("%s is empty: write the key's base64 secret into it", k.SecretFile)
	}
	if _, err := base64.StdEncoding.DecodeString(secret); err != nil {
		return "", fmt.Errorf("%s does not hold a base64 secret (as tsig-keygen prints it)", k.SecretFile)
	}
	return secret, nil
}

// String describes the key without its secret.
func (k DNSKey) String() string {
	return fmt.Sprintf("dnskey{algorithm: %s, secret_file: %s}", k.Algorithm, k.SecretFile)
}

// GoString is String, so that %#v prints the same safe description.
func (k DNSKey) GoString() string { return "config." + k.String() }

// validateDNSKeys checks every key; it returns problems keyed "dns_keys.<name>".
func validateDNSKeys(keys map[string]DNSKey) []problem {
	names := make([]string, 0, len(keys))
	for n := range keys {
		names = append(names, n)
	}
	sort.Strings(names)
	var ps []problem
	for _, n := range names {
		k := keys[n]
		key := "dns_keys." + n
		if strings.TrimSpace(n) == "" {
			ps = append(ps, problem{"dns_keys", "a key has an empty name"})
			continue
		}
		ok := false
		for _, a := range dnsAlgorithms {
			if k.Algorithm == a {
				ok = true
			}
		}
		if !ok {
			ps = append(ps, problem{key, fmt.Sprintf("algorithm %q is not one of %s", k.Algorithm, strings.Join(dnsAlgorithms, ", "))})
		}
		if k.SecretFile == "" {
			ps = append(ps, problem{key, "secret_file is required"})
			continue
		}
		if _, err := k.Secret(); err != nil {
			ps = append(ps, problem{key, err.Error()})
		}
	}
	return ps
}
