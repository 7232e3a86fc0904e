package dnspub

import (
	"encoding/base64"
	"fmt"
	"log/slog"
	"strings"

	"github.com/miekg/dns"
)

// Key is a TSIG key shared with the DNS server: the key name and algorithm as the server's
// configuration spells them, and the base64 secret. The secret lives in each witness's config
// (dns_keys), never in the replicated state; String, GoString and LogValue leave it out, and no
// error from this package contains it.
type Key struct {
	// Name is the key's name, as in the server's `key "NAME" { ... }` clause.
	Name string
	// Algorithm is hmac-sha256 (the default when empty), hmac-sha512 or hmac-sha1.
	Algorithm string
	// Secret is the shared secret, base64 encoded (as tsig-keygen prints it).
	Secret string
}

// algorithms maps the names accepted in Key.Algorithm to the TSIG algorithm names on the wire.
var algorithms = map[string]string{
	"hmac-sha256": dns.HmacSHA256,
	"hmac-sha512": dns.HmacSHA512,
	"hmac-sha1":   dns.HmacSHA1,
}

// String names the key and its algorithm, never its secret.
func (k Key) String() string {
	alg := k.Algorithm
	if alg == "" {
		alg = "hmac-sha256"
	}
	return fmt.Sprintf("TSIG key %q (%s)", k.Name, alg)
}

// GoString is String, so that %#v does not print the secret either.
func (k Key) GoString() string { return k.String() }

// LogValue makes log/slog record the key's name and algorithm, never its secret.
func (k Key) LogValue() slog.Value {
	return slog.GroupValue(slog.String("name", k.Name), slog.String("algorithm", k.Algorithm))
}

// wire checks the key and returns its canonical name (lower case, fully qualified) and the
// algorithm's wire name. Errors wrap ErrInvalidUpdate and never contain the secret.
func (k Key) wire() (name, alg string, err error) {
	if k.Name == "" {
		return "", "", fmt.Errorf("%w: the TSIG key has no name: set the key's name as the DNS server's configuration spells it", ErrInvalidUpdate)
	}
	if _, ok := dns.IsDomainName(k.Name); !ok {
		return "", "", fmt.Errorf("%w: TSIG key name %q is not a valid domain name", ErrInvalidUpdate, k.Name)
	}
	a := strings.TrimSuffix(strings.ToLower(k.Algorithm), ".")
	if a == "" {
		a = "hmac-sha256"
	}
	alg, ok := algorithms[a]
	if !ok {
		return "", "", fmt.Errorf("%w: %s: unsupported algorithm %q: use hmac-sha256, hmac-sha512 or hmac-sha1", ErrInvalidUpdate, k, k.Algorithm)
	}
	if k.Secret == "" {
		return "", "", fmt.Errorf("%w: %s has an empty secret: set it in dns_keys", ErrInvalidUpdate, k)
	}
	if _, err := base64.StdEncoding.DecodeString(k.Secret); err != nil {
		// The decoder's error names an offset in the secret, not its bytes; still leave it out.
		return "", "", fmt.Errorf("%w: %s: the secret is not valid base64: copy it as tsig-keygen printed it", ErrInvalidUpdate, k)
	}
	return dns.CanonicalName(k.Name), alg, nil
}
