// Package dnspub publishes a cluster's primary in DNS with one RFC 2136 dynamic update, signed
// with TSIG and guarded by a prerequisite on a token record, so that an update sent by a stale
// leader fails at the DNS server instead of moving the name back.
//
// The token is a TXT record at TokenName(record) holding Token(term, event) of the last publish.
// Each Publish names the token it expects (the cluster's dns_token) and, in the same atomic
// update, moves the record and writes the new token. See the repository's DESIGN.md (flow 3,
// invariant 2) and this package's DESIGN.md.
package dnspub

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Sentinel errors, matched with errors.Is. Each error returned wraps at most one of them and says
// what was wrong and what to do.
var (
	// ErrStaleToken means the server refused the update's prerequisite: the token record does not
	// hold the token this update expected, so a newer leader has published since. Nothing changed.
	ErrStaleToken = errors.New("dnspub: the DNS name was updated by a newer leader")
	// ErrAuth means the server did not accept the TSIG signature or key (NOTAUTH, BADSIG, BADKEY,
	// BADTIME), or its answer was not signed correctly. Nothing changed, except when a NOERROR
	// answer's own signature failed to verify: the error then says the update may have applied.
	ErrAuth = errors.New("dnspub: the DNS server did not accept the TSIG key")
	// ErrRefused means the server refused the update (REFUSED): its policy does not let this key
	// update this zone. Nothing changed.
	ErrRefused = errors.New("dnspub: the DNS server refused the update")
	// ErrInvalidUpdate means the Update (or its Key) is not well formed; nothing was sent.
	ErrInvalidUpdate = errors.New("dnspub: invalid DNS update")
)

// TokenLabel is the label that, prefixed to a published record's name, names its token record.
const TokenLabel = "_regent-token"

// tsigFudge is the clock difference, in seconds, the server tolerates for the signature (the
// customary 300).
const tsigFudge = 300

// defaultTimeout bounds each exchange when ctx has no earlier deadline.
const defaultTimeout = 15 * time.Second

// Update says what to publish and where. The zero TTL is allowed (no caching).
type Update struct {
	// Server is the DNS server's address, host:port (port 53 when omitted).
	Server string
	// Zone is the zone to update, e.g. "example.com.".
	Zone string
	// Record is the name to point at the primary, inside Zone, e.g. "db.example.com.".
	Record string
	// TTL is the new record's TTL (and the token record's) in seconds.
	TTL uint32
	// Target is the primary: an IPv4 address (published as A), an IPv6 address (AAAA) or a
	// host name (CNAME; publishing one removes any other records at Record, since a CNAME
	// must stand alone).
	Target string
	// PrevToken is the token of the last successful publish (the cluster's dns_token), or ""
	// when nothing was published yet, in which case no token record may exist.
	PrevToken string
	// NewToken is this publish's token (regent writes fsm.DNSToken(term, event)).
	NewToken string
	// Key signs the update.
	Key Key
}

// TokenName returns the name of the TXT record that holds the token for record.
func TokenName(record string) string {
	return TokenLabel + "." + dns.Fqdn(record)
}

// Publish points u.Record at u.Target with one dynamic update message, which the server applies
// atomically or not at all. The update carries a prerequisite on the token record: its TXT value
// must be u.PrevToken (or, when u.PrevToken is "", it must not exist). It deletes the record's
// A, AAAA and CNAME RRsets (every RRset at the name when the target is a CNAME, which must stand
// alone), adds the new one with u.TTL, and replaces the token with u.NewToken.
// It is signed with u.Key and sent over TCP; ctx bounds the whole exchange.
//
// Publish is idempotent: when the prerequisite fails because the token already is u.NewToken and
// the record already points at u.Target (a retry after a lost answer), it returns nil.
//
// Errors wrap ErrStaleToken, ErrAuth, ErrRefused or ErrInvalidUpdate as documented there; network
// errors and ctx's error are wrapped too.
func Publish(ctx context.Context, u Update) error {
	now := time.Now()
	m, err := buildUpdate(u, now)
	if err != nil {
		return err
	}
	keyName, _, _ := u.Key.wire() // checked by buildUpdate
	server := withPort(u.Server)
	c := &dns.Client{
		Net:          "tcp",
		DialTimeout:  defaultTimeout,
		ReadTimeout:  defaultTimeout,
		WriteTimeout: defaultTimeout,
		TsigSecret:   map[string]string{keyName: u.Key.Secret},
	}
	r, exErr := exchange(ctx, c, m, server)
	err = replyError(u, r, exErr, ctxErr(ctx))
	if !errors.Is(err, ErrStaleToken) {
		return err
	}
	// The prerequisite failed. Read what is there: a retry of an update that was applied is a
	// success, anything else is reported with the token found.
	targets, token, lerr := Lookup(ctx, u.Server, u.Record)
	if lerr != nil {
		return fmt.Errorf("%w (and reading the current token failed: %v)", err, lerr)
	}
	if token == u.NewToken && len(targets) == 1 && sameTarget(targets[0], u.Target) {
		return nil
	}
	return fmt.Errorf("%w (the token record now holds %q and %s points at %s)", err, token, dns.Fqdn(u.Record), describeTargets(targets))
}

// buildUpdate checks u and builds the signed-to-be update message; now stamps the TSIG record.
func buildUpdate(u Update, now time.Time) (*dns.Msg, error) {
	keyName, alg, err := u.Key.wire()
	if err != nil {
		return nil, err
	}
	if u.Server == "" {
		return nil, fmt.Errorf("%w: no DNS server: set the cluster's dns server (host:port)", ErrInvalidUpdate)
	}
	if _, _, err := net.SplitHostPort(withPort(u.Server)); err != nil {
		return nil, fmt.Errorf("%w: DNS server %q is not host:port: %v", ErrInvalidUpdate, u.Server, err)
	}
	if _, ok := dns.IsDomainName(u.Zone); !ok || u.Zone == "" {
		return nil, fmt.Errorf("%w: zone %q is not a valid domain name", ErrInvalidUpdate, u.Zone)
	}
	zone := dns.Fqdn(u.Zone)
	if _, ok := dns.IsDomainName(u.Record); !ok || u.Record == "" {
		return nil, fmt.Errorf("%w: record %q is not a valid domain name", ErrInvalidUpdate, u.Record)
	}
	record := dns.Fqdn(u.Record)
	if !dns.IsSubDomain(zone, record) {
		return nil, fmt.Errorf("%w: record %s is not inside zone %s: use a name ending in .%s", ErrInvalidUpdate, record, zone, zone)
	}
	tokenName := TokenName(record)
	if _, ok := dns.IsDomainName(tokenName); !ok {
		return nil, fmt.Errorf("%w: record %s is too long to prefix with %s", ErrInvalidUpdate, record, TokenLabel)
	}
	if u.NewToken == "" {
		return nil, fmt.Errorf("%w: no new token: pass Token(term, event)", ErrInvalidUpdate)
	}
	for _, t := range []string{u.PrevToken, u.NewToken} {
		if len(t) > 255 {
			return nil, fmt.Errorf("%w: token %.40q... is longer than the 255 bytes a TXT string holds", ErrInvalidUpdate, t)
		}
	}
	rec, err := targetRR(record, zone, u.Target, u.TTL)
	if err != nil {
		return nil, err
	}

	m := new(dns.Msg)
	m.SetUpdate(zone)
	// Prerequisite on the token.
	if u.PrevToken != "" {
		m.Used([]dns.RR{&dns.TXT{Hdr: dns.RR_Header{Name: tokenName, Rrtype: dns.TypeTXT}, Txt: []string{u.PrevToken}}})
	} else {
		m.RRsetNotUsed([]dns.RR{&dns.ANY{Hdr: dns.RR_Header{Name: tokenName, Rrtype: dns.TypeTXT}}})
	}
	// Move the record: delete whatever address or alias it had, then add the new one. A CNAME
	// must stand alone at its name, and a server ignores (with success) a CNAME added beside other
	// data, which would leave the name pointing nowhere; so for a CNAME every RRset at the name
	// goes (the zone apex, where that would touch SOA and NS, cannot be a CNAME: checked above).
	if rec.Header().Rrtype == dns.TypeCNAME {
		m.RemoveName([]dns.RR{&dns.ANY{Hdr: dns.RR_Header{Name: record}}})
	} else {
		m.RemoveRRset([]dns.RR{
			&dns.ANY{Hdr: dns.RR_Header{Name: record, Rrtype: dns.TypeA}},
			&dns.ANY{Hdr: dns.RR_Header{Name: record, Rrtype: dns.TypeAAAA}},
			&dns.ANY{Hdr: dns.RR_Header{Name: record, Rrtype: dns.TypeCNAME}},
		})
	}
	m.Insert([]dns.RR{rec})
	// Replace the token.
	m.RemoveRRset([]dns.RR{&dns.ANY{Hdr: dns.RR_Header{Name: tokenName, Rrtype: dns.TypeTXT}}})
	m.Insert([]dns.RR{&dns.TXT{Hdr: dns.RR_Header{Name: tokenName, Rrtype: dns.TypeTXT, Ttl: u.TTL}, Txt: []string{u.NewToken}}})
	m.SetTsig(keyName, alg, tsigFudge, now.Unix())
	return m, nil
}

// targetRR returns the record to publish for target: A, AAAA or CNAME.
func targetRR(record, zone, target string, ttl uint32) (dns.RR, error) {
	hdr := dns.RR_Header{Name: record, Class: dns.ClassINET, Ttl: ttl}
	if target == "" {
		return nil, fmt.Errorf("%w: no target for %s: pass the new primary's address or host name", ErrInvalidUpdate, record)
	}
	if ip := net.ParseIP(target); ip != nil {
		if v4 := ip.To4(); v4 != nil {
			hdr.Rrtype = dns.TypeA
			return &dns.A{Hdr: hdr, A: v4}, nil
		}
		hdr.Rrtype = dns.TypeAAAA
		return &dns.AAAA{Hdr: hdr, AAAA: ip}, nil
	}
	if _, ok := dns.IsDomainName(target); !ok || strings.ContainsAny(target, " \t") {
		return nil, fmt.Errorf("%w: target %q is neither an IP address nor a host name", ErrInvalidUpdate, target)
	}
	t := dns.Fqdn(target)
	if strings.EqualFold(t, record) {
		return nil, fmt.Errorf("%w: target %s is the record itself: a CNAME to itself loops", ErrInvalidUpdate, t)
	}
	if strings.EqualFold(record, zone) {
		return nil, fmt.Errorf("%w: record %s is the zone apex, which cannot be a CNAME: publish an address, or use a name inside the zone", ErrInvalidUpdate, record)
	}
	hdr.Rrtype = dns.TypeCNAME
	return &dns.CNAME{Hdr: hdr, Target: t}, nil
}

// exchange sends m to server with c, bounded by ctx: its deadline limits each step and its
// cancellation closes the connection.
func exchange(ctx context.Context, c *dns.Client, m *dns.Msg, server string) (*dns.Msg, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	conn, err := c.DialContext(ctx, server)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	r, _, err := c.ExchangeWithConnContext(ctx, m, conn)
	return r, err
}

// ctxErr returns ctx's error, also when its deadline has passed but the context has not yet
// noticed: a connection's deadline, set from ctx's, may fire a moment before ctx's own timer.
func ctxErr(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
		return context.DeadlineExceeded
	}
	return nil
}

// replyError maps the outcome of one exchange to Publish's error: exErr is the exchange's error
// (r may be non-nil with it, when the answer's signature did not verify) and ctxErr ctx's.
func replyError(u Update, r *dns.Msg, exErr, ctxErr error) error {
	record := dns.Fqdn(u.Record)
	server := withPort(u.Server)
	if r == nil {
		if exErr == nil {
			exErr = errors.New("no answer")
		}
		if ctxErr != nil {
			return fmt.Errorf("dnspub: publishing %s at %s gave up: %w (%w)", record, server, ctxErr, exErr)
		}
		return fmt.Errorf("dnspub: sending the update for %s to %s failed: %w; check the server address and that it accepts TCP", record, server, exErr)
	}
	authHint := fmt.Sprintf("check the TSIG key name and secret in dns_keys (%s)", u.Key)
	if t := r.IsTsig(); t != nil && t.Error != dns.RcodeSuccess {
		hint := authHint
		if t.Error == dns.RcodeBadTime {
			hint = "the clocks of this host and the DNS server differ by more than 5 minutes: fix NTP"
		}
		return fmt.Errorf("%w: %s answered %s (TSIG %s) to the update for %s: %s",
			ErrAuth, server, rcodeName(r.Rcode), rcodeName(int(t.Error)), record, hint)
	}
	switch r.Rcode {
	case dns.RcodeSuccess:
		if exErr != nil {
			return fmt.Errorf("%w: the answer from %s to the update for %s did not verify (%v): %s; the update may have been applied",
				ErrAuth, server, record, exErr, authHint)
		}
		if r.IsTsig() == nil {
			return fmt.Errorf("%w: %s answered the signed update for %s without a signature, so its success cannot be trusted: %s",
				ErrAuth, server, record, authHint)
		}
		return nil
	case dns.RcodeNXRrset, dns.RcodeYXRrset, dns.RcodeNameError, dns.RcodeYXDomain:
		want := fmt.Sprintf("to hold %q", u.PrevToken)
		if u.PrevToken == "" {
			want = "not to exist"
		}
		return fmt.Errorf("%w: %s answered %s: the update for %s expected %s %s; this leader's view is stale, so nothing was changed",
			ErrStaleToken, server, rcodeName(r.Rcode), record, TokenName(record), want)
	case dns.RcodeNotAuth:
		return fmt.Errorf("%w: %s answered NOTAUTH to the update for %s in zone %s: %s, and that the server is primary for the zone",
			ErrAuth, server, record, dns.Fqdn(u.Zone), authHint)
	case dns.RcodeRefused:
		return fmt.Errorf("%w: %s answered REFUSED to the update for %s in zone %s: let %s update the zone (BIND: allow-update or update-policy), and check that the server is primary for the zone",
			ErrRefused, server, record, dns.Fqdn(u.Zone), u.Key)
	case dns.RcodeNotZone:
		return fmt.Errorf("dnspub: %s answered NOTZONE: %s is not in zone %s there; check the cluster's dns zone and record", server, record, dns.Fqdn(u.Zone))
	default:
		return fmt.Errorf("dnspub: %s answered %s to the update for %s: see the DNS server's log", server, rcodeName(r.Rcode), record)
	}
}

// rcodeName names a response code, or prints its number when it has no name.
func rcodeName(rc int) string {
	if s, ok := dns.RcodeToString[rc]; ok {
		return s
	}
	return fmt.Sprintf("RCODE%d", rc)
}

// withPort adds DNS's port 53 to a server address that has none.
func withPort(server string) string {
	if _, _, err := net.SplitHostPort(server); err == nil {
		return server
	}
	if strings.Count(server, ":") > 1 && !strings.HasPrefix(server, "[") { // bare IPv6
		return net.JoinHostPort(server, "53")
	}
	if strings.Contains(server, ":") {
		return server // malformed; SplitHostPort reports it
	}
	return net.JoinHostPort(server, "53")
}

// sameTarget says whether a looked-up target is the target published.
func sameTarget(found, target string) bool {
	if ip := net.ParseIP(target); ip != nil {
		f := net.ParseIP(found)
		return f != nil && f.Equal(ip)
	}
	return strings.EqualFold(dns.Fqdn(found), dns.Fqdn(target))
}

// describeTargets prints looked-up targets for an error message.
func describeTargets(ts []string) string {
	if len(ts) == 0 {
		return "nothing"
	}
	return strings.Join(ts, ", ")
}
