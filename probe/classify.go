package probe

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
)

// ErrorClass says why a probe failed, coarsely enough to count and alert
// on. The zero value, ClassNone, means the probe succeeded.
type ErrorClass string

// Error classes, from Classify and Result.ErrorClass.
const (
	// ClassNone: no error.
	ClassNone ErrorClass = ""
	// ClassTimeout: the probe's deadline passed (a hung or unreachable
	// host, a network that drops packets, a server too busy to answer).
	ClassTimeout ErrorClass = "timeout"
	// ClassRefused: the host answered but nothing listens on the port
	// (PostgreSQL is down).
	ClassRefused ErrorClass = "refused"
	// ClassAuth: the server rejected the login (SQLSTATE class 28: wrong
	// password, unknown role, no pg_hba.conf entry).
	ClassAuth ErrorClass = "auth"
	// ClassDNS: the host name did not resolve.
	ClassDNS ErrorClass = "dns"
	// ClassTLS: the TLS handshake or certificate check failed, or the
	// server refused TLS that sslmode requires.
	ClassTLS ErrorClass = "tls"
	// ClassServerError: PostgreSQL answered with an error other than an
	// authentication one (starting up, shutting down, too many
	// connections, missing privilege, no such database...).
	ClassServerError ErrorClass = "server_error"
	// ClassWrongSystem: the server answered with another cluster's system
	// identifier than the target expects: it is not that node.
	ClassWrongSystem ErrorClass = "wrong_system"
	// ClassOther: anything else (connection reset, protocol error,
	// cancelled probe, bad target).
	ClassOther ErrorClass = "other"
)

// ErrWrongSystem is wrapped by a Result's Err when the server's system
// identifier differs from Target.ExpectedSystemID.
var ErrWrongSystem = errors.New("server belongs to another cluster")

// Classify returns the class of a probe error; nil is ClassNone.
func Classify(err error) ErrorClass {
	if err == nil {
		return ClassNone
	}
	if errors.Is(err, ErrWrongSystem) {
		return ClassWrongSystem
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		if strings.HasPrefix(pgErr.Code, "28") {
			return ClassAuth
		}
		return ClassServerError
	}
	if errors.Is(err, context.Canceled) {
		return ClassOther
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return ClassDNS
	}
	if isTLSError(err) {
		return ClassTLS
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) || pgconn.Timeout(err) {
		return ClassTimeout
	}
	var netErr net.Error
	if errors.As(err, &netErr) && netErr.Timeout() {
		return ClassTimeout
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return ClassRefused
	}
	// pgconn reports these without a type of their own.
	if msg := err.Error(); strings.Contains(msg, "server refused TLS connection") || strings.Contains(msg, "tls: ") {
		return ClassTLS
	}
	return ClassOther
}

func isTLSError(err error) bool {
	var (
		recErr    tls.RecordHeaderError
		recErrP   *tls.RecordHeaderError
		alert     tls.AlertError
		verify    *tls.CertificateVerificationError
		unknownCA x509.UnknownAuthorityError
		hostErr   x509.HostnameError
		invalid   x509.CertificateInvalidError
		roots     x509.SystemRootsError
	)
	return errors.As(err, &recErr) || errors.As(err, &recErrP) || errors.As(err, &alert) || errors.As(err, &verify) ||
		errors.As(err, &unknownCA) || errors.As(err, &hostErr) || errors.As(err, &invalid) || errors.As(err, &roots)
}
