package dnspub

import (
	"context"
	"fmt"
	"strings"

	"github.com/miekg/dns"
)

// Lookup asks server (host:port, port 53 when omitted) directly, over TCP and without recursion,
// what record points at and which token guards it. targets holds the record's IPv4 addresses, then
// its IPv6 addresses, then its CNAME target (fully qualified); it is empty when the record does
// not exist. token is the TXT value at TokenName(record), or "" when there is none (values of
// several TXT records, which Publish never leaves, are joined with ", "). ctx bounds the lookup.
func Lookup(ctx context.Context, server, record string) (targets []string, token string, err error) {
	if _, ok := dns.IsDomainName(record); !ok || record == "" {
		return nil, "", fmt.Errorf("%w: record %q is not a valid domain name", ErrInvalidUpdate, record)
	}
	if server == "" {
		return nil, "", fmt.Errorf("%w: no DNS server to ask: pass host:port", ErrInvalidUpdate)
	}
	record = dns.Fqdn(record)
	addr := withPort(server)
	c := &dns.Client{Net: "tcp", DialTimeout: defaultTimeout, ReadTimeout: defaultTimeout, WriteTimeout: defaultTimeout}
	if err := ctx.Err(); err != nil {
		return nil, "", fmt.Errorf("dnspub: looking up %s at %s: %w", record, addr, err)
	}
	conn, err := c.DialContext(ctx, addr)
	if err != nil {
		return nil, "", fmt.Errorf("dnspub: looking up %s: connecting to %s failed: %w; check the server address and that it accepts TCP", record, addr, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	ask := func(name string, qtype uint16) ([]dns.RR, error) {
		q := new(dns.Msg)
		q.SetQuestion(name, qtype)
		q.RecursionDesired = false
		r, _, err := c.ExchangeWithConnContext(ctx, q, conn)
		if err != nil {
			if cerr := ctxErr(ctx); cerr != nil {
				return nil, fmt.Errorf("dnspub: looking up %s %s at %s gave up: %w (%w)", name, dns.TypeToString[qtype], addr, cerr, err)
			}
			return nil, fmt.Errorf("dnspub: looking up %s %s at %s failed: %w", name, dns.TypeToString[qtype], addr, err)
		}
		if r.Rcode != dns.RcodeSuccess && r.Rcode != dns.RcodeNameError {
			return nil, fmt.Errorf("dnspub: %s answered %s to the query for %s %s: check that it serves the zone", addr, rcodeName(r.Rcode), name, dns.TypeToString[qtype])
		}
		var out []dns.RR
		for _, rr := range r.Answer {
			h := rr.Header()
			if h.Rrtype == qtype && strings.EqualFold(h.Name, name) {
				out = append(out, rr)
			}
		}
		return out, nil
	}

	for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeCNAME} {
		rrs, err := ask(record, qt)
		if err != nil {
			return nil, "", err
		}
		for _, rr := range rrs {
			switch rr := rr.(type) {
			case *dns.A:
				targets = append(targets, rr.A.String())
			case *dns.AAAA:
				targets = append(targets, rr.AAAA.String())
			case *dns.CNAME:
				targets = append(targets, rr.Target)
			}
		}
	}
	txts, err := ask(TokenName(record), dns.TypeTXT)
	if err != nil {
		return nil, "", err
	}
	var tokens []string
	for _, rr := range txts {
		tokens = append(tokens, strings.Join(rr.(*dns.TXT).Txt, ""))
	}
	return targets, strings.Join(tokens, ", "), nil
}
