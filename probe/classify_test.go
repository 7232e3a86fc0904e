package probe

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestClassify(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: &os.SyscallError{Syscall: "connect", Err: syscall.ECONNREFUSED}}
	tests := []struct {
		name string
		err  error
		want ErrorClass
	}{
		{"nil", nil, ClassNone},
		{"deadline", context.DeadlineExceeded, ClassTimeout},
		{"wrapped deadline", fmt.Errorf("probe: connecting: %w", context.DeadlineExceeded), ClassTimeout},
		{"os deadline", &net.OpError{Op: "read", Err: os.ErrDeadlineExceeded}, ClassTimeout},
		{"net timeout", fmt.Errorf("x: %w", timeoutErr{}), ClassTimeout},
		{"refused", fmt.Errorf("probe: connecting: %w", refused), ClassRefused},
		{"dns", &net.DNSError{Err: "no such host", Name: "db.invalid", IsNotFound: true}, ClassDNS},
		{"dns timeout", &net.DNSError{Err: "i/o timeout", Name: "db.example", IsTimeout: true}, ClassDNS},
		{"bad password", &pgconn.PgError{Severity: "FATAL", Code: "28P01"}, ClassAuth},
		{"no such role", fmt.Errorf("x: %w", &pgconn.PgError{Severity: "FATAL", Code: "28000"}), ClassAuth},
		{"starting up", &pgconn.PgError{Severity: "FATAL", Code: "57P03"}, ClassServerError},
		{"no privilege", &pgconn.PgError{Severity: "ERROR", Code: "42501"}, ClassServerError},
		{"no database", &pgconn.PgError{Severity: "FATAL", Code: "3D000"}, ClassServerError},
		{"wrong system", fmt.Errorf("%w: id 1, expected 2", ErrWrongSystem), ClassWrongSystem},
		{"unknown CA", fmt.Errorf("x: %w", x509.UnknownAuthorityError{}), ClassTLS},
		{"hostname", x509.HostnameError{Host: "db"}, ClassTLS},
		{"alert", fmt.Errorf("remote error: %w", tls.AlertError(42)), ClassTLS},
		{"record header", tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"}, ClassTLS},
		{"verify", &tls.CertificateVerificationError{Err: errors.New("bad")}, ClassTLS},
		{"server refused TLS", fmt.Errorf("failed to connect: %w", errors.New("server refused TLS connection")), ClassTLS},
		{"cancelled", fmt.Errorf("x: %w", context.Canceled), ClassOther},
		{"eof", io.ErrUnexpectedEOF, ClassOther},
		{"reset", &net.OpError{Op: "read", Err: &os.SyscallError{Syscall: "read", Err: syscall.ECONNRESET}}, ClassOther},
		{"closed", ErrClosed, ClassOther},
		{"plain", errors.New("something odd"), ClassOther},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Classify(tt.err); got != tt.want {
				t.Errorf("Classify(%v) = %q; want %q", tt.err, got, tt.want)
			}
		})
	}
}
