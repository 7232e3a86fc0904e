package dnspub

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

const testSecret = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI="

func testUpdate() Update {
	return Update{
		Server:    "127.0.0.1:5353",
		Zone:      "example.test.",
		Record:    "db.example.test.",
		TTL:       30,
		Target:    "192.0.2.10",
		PrevToken: "regent term=1 event=1",
		NewToken:  "regent term=2 event=3",
		Key:       Key{Name: "regent-key", Secret: testSecret},
	}
}

func TestTokenName(t *testing.T) {
	if got := TokenName("db.example.test"); got != "_regent-token.db.example.test." {
		t.Errorf("TokenName = %q", got)
	}
}

// rrString prints an RR with its class and TTL, e.g. "db.example.test. 0 ANY A".
func rrString(rr dns.RR) string {
	h := rr.Header()
	s := fmt.Sprintf("%s %d %s %s", h.Name, h.Ttl, dns.ClassToString[h.Class], dns.TypeToString[h.Rrtype])
	switch rr := rr.(type) {
	case *dns.A:
		s += " " + rr.A.String()
	case *dns.AAAA:
		s += " " + rr.AAAA.String()
	case *dns.CNAME:
		s += " " + rr.Target
	case *dns.TXT:
		s += fmt.Sprintf(" %q", rr.Txt)
	}
	return s
}

func rrStrings(rrs []dns.RR) []string {
	out := make([]string, len(rrs))
	for i, rr := range rrs {
		out[i] = rrString(rr)
	}
	return out
}

func TestBuildUpdate(t *testing.T) {
	deletes := []string{
		"db.example.test. 0 ANY A",
		"db.example.test. 0 ANY AAAA",
		"db.example.test. 0 ANY CNAME",
	}
	tokenUpdate := []string{
		"_regent-token.db.example.test. 0 ANY TXT",
		`_regent-token.db.example.test. 30 IN TXT ["regent term=2 event=3"]`,
	}
	for _, tc := range []struct {
		name       string
		edit       func(*Update)
		wantPrereq []string
		wantDelete []string // nil: the A, AAAA and CNAME RRsets
		wantAdd    string
	}{
		{
			name:       "IPv4 with previous token",
			edit:       func(*Update) {},
			wantPrereq: []string{`_regent-token.db.example.test. 0 IN TXT ["regent term=1 event=1"]`},
			wantAdd:    "db.example.test. 30 IN A 192.0.2.10",
		},
		{
			name:       "first publish: the token must not exist",
			edit:       func(u *Update) { u.PrevToken = "" },
			wantPrereq: []string{"_regent-token.db.example.test. 0 NONE TXT"},
			wantAdd:    "db.example.test. 30 IN A 192.0.2.10",
		},
		{
			name:       "IPv6",
			edit:       func(u *Update) { u.Target = "2001:db8::10" },
			wantPrereq: []string{`_regent-token.db.example.test. 0 IN TXT ["regent term=1 event=1"]`},
			wantAdd:    "db.example.test. 30 IN AAAA 2001:db8::10",
		},
		{
			name:       "host name becomes a fully qualified CNAME",
			edit:       func(u *Update) { u.Target = "pg-2.example.net" },
			wantPrereq: []string{`_regent-token.db.example.test. 0 IN TXT ["regent term=1 event=1"]`},
			wantDelete: []string{"db.example.test. 0 ANY ANY"},
			wantAdd:    "db.example.test. 30 IN CNAME pg-2.example.net.",
		},
		{
			name: "names without trailing dots and a server without a port",
			edit: func(u *Update) {
				u.Zone, u.Record, u.Server, u.Target = "example.test", "db.example.test", "127.0.0.1", "::ffff:192.0.2.10"
			},
			wantPrereq: []string{`_regent-token.db.example.test. 0 IN TXT ["regent term=1 event=1"]`},
			wantAdd:    "db.example.test. 30 IN A 192.0.2.10",
		},
		{
			name:       "record at the zone apex, TTL 0",
			edit:       func(u *Update) { u.Record, u.TTL = "example.test.", 0 },
			wantPrereq: []string{`_regent-token.example.test. 0 IN TXT ["regent term=1 event=1"]`},
			wantAdd:    "example.test. 0 IN A 192.0.2.10",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := testUpdate()
			tc.edit(&u)
			now := time.Unix(1_800_000_000, 0)
			m, err := buildUpdate(u, now)
			if err != nil {
				t.Fatalf("buildUpdate: %v", err)
			}
			if m.Opcode != dns.OpcodeUpdate || len(m.Question) != 1 ||
				m.Question[0] != (dns.Question{Name: "example.test.", Qtype: dns.TypeSOA, Qclass: dns.ClassINET}) {
				t.Fatalf("header: opcode %d zone section %v; want an UPDATE of example.test. SOA IN", m.Opcode, m.Question)
			}
			if got := rrStrings(m.Answer); strings.Join(got, "|") != strings.Join(tc.wantPrereq, "|") {
				t.Errorf("prerequisites:\n got %q\nwant %q", got, tc.wantPrereq)
			}
			record := dns.Fqdn(u.Record)
			wantDeletes := tc.wantDelete
			if wantDeletes == nil {
				wantDeletes = make([]string, len(deletes))
				for i, d := range deletes {
					wantDeletes[i] = strings.Replace(d, "db.example.test.", record, 1)
				}
			}
			wantTok := make([]string, len(tokenUpdate))
			for i, d := range tokenUpdate {
				wantTok[i] = strings.Replace(strings.Replace(d, "db.example.test.", record, 1), " 30 IN", fmt.Sprintf(" %d IN", u.TTL), 1)
			}
			want := append(append(append([]string{}, wantDeletes...), tc.wantAdd), wantTok...)
			if got := rrStrings(m.Ns); strings.Join(got, "|") != strings.Join(want, "|") {
				t.Errorf("update section:\n got %q\nwant %q", got, want)
			}
			if len(m.Extra) != 1 {
				t.Fatalf("additional section %v; want only the TSIG record", m.Extra)
			}
			ts := m.IsTsig()
			if ts == nil || ts.Hdr.Name != "regent-key." || ts.Algorithm != dns.HmacSHA256 || ts.Fudge != 300 ||
				ts.TimeSigned != uint64(now.Unix()) || ts.OrigId != m.Id {
				t.Fatalf("TSIG %v; want regent-key. hmac-sha256. fudge 300 signed at %d", ts, now.Unix())
			}
			// The message packs and signs, and the signature verifies with the key.
			wire, _, err := dns.TsigGenerate(m, testSecret, "", false)
			if err != nil {
				t.Fatalf("signing: %v", err)
			}
			var back dns.Msg
			if err := back.Unpack(wire); err != nil {
				t.Fatalf("unpacking the signed message: %v", err)
			}
			if len(back.Answer) != len(m.Answer) || len(back.Ns) != len(m.Ns) || back.IsTsig() == nil || back.IsTsig().MAC == "" {
				t.Fatalf("the wire message lost records: %v", &back)
			}
			// (TsigVerify strips the TSIG record from the buffer it is given, so it comes last.)
			if err := dns.TsigVerify(wire, testSecret, "", false); err != nil && !errors.Is(err, dns.ErrTime) {
				t.Fatalf("the signature does not verify: %v", err)
			}
		})
	}
}

func TestBuildUpdateAlgorithms(t *testing.T) {
	for alg, wire := range map[string]string{
		"":             dns.HmacSHA256,
		"hmac-sha256":  dns.HmacSHA256,
		"HMAC-SHA512":  dns.HmacSHA512,
		"hmac-sha1.":   dns.HmacSHA1,
		"hmac-sha512.": dns.HmacSHA512,
	} {
		u := testUpdate()
		u.Key.Algorithm = alg
		u.Key.Name = "Regent-Key.Example."
		m, err := buildUpdate(u, time.Now())
		if err != nil {
			t.Errorf("algorithm %q: %v", alg, err)
			continue
		}
		if ts := m.IsTsig(); ts.Algorithm != wire || ts.Hdr.Name != "regent-key.example." {
			t.Errorf("algorithm %q: TSIG %s %s; want regent-key.example. %s", alg, ts.Hdr.Name, ts.Algorithm, wire)
		}
	}
}

func TestBuildUpdateRejectsBadInput(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*Update)
		want string
	}{
		{"no server", func(u *Update) { u.Server = "" }, "no DNS server"},
		{"bad server", func(u *Update) { u.Server = "127.0.0.1:53:53:x]" }, "not host:port"},
		{"no zone", func(u *Update) { u.Zone = "" }, "zone"},
		{"record outside the zone", func(u *Update) { u.Record = "db.example.org." }, "not inside zone example.test."},
		{"no record", func(u *Update) { u.Record = "" }, "record"},
		{"no target", func(u *Update) { u.Target = "" }, "no target"},
		{"bad target", func(u *Update) { u.Target = "pg 2.example.net" }, "neither an IP address nor a host name"},
		{"CNAME to itself", func(u *Update) { u.Target = "DB.example.test" }, "loops"},
		{"CNAME at the apex", func(u *Update) { u.Record, u.Target = "example.test.", "pg.example.net" }, "apex"},
		{"no new token", func(u *Update) { u.NewToken = "" }, "no new token"},
		{"token too long", func(u *Update) { u.NewToken = strings.Repeat("x", 256) }, "255 bytes"},
		{"key without a name", func(u *Update) { u.Key.Name = "" }, "no name"},
		{"unknown algorithm", func(u *Update) { u.Key.Algorithm = "hmac-md5" }, "hmac-sha256, hmac-sha512 or hmac-sha1"},
		{"empty secret", func(u *Update) { u.Key.Secret = "" }, "empty secret"},
		{"secret not base64", func(u *Update) { u.Key.Secret = "not*base64!" }, "not valid base64"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := testUpdate()
			tc.edit(&u)
			_, err := buildUpdate(u, time.Now())
			if !errors.Is(err, ErrInvalidUpdate) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("buildUpdate: %v; want ErrInvalidUpdate mentioning %q", err, tc.want)
			}
			if u.Key.Secret != "" && strings.Contains(err.Error(), u.Key.Secret) {
				t.Fatalf("error %q contains the secret", err)
			}
			// Publish refuses it too, without sending anything.
			if err := Publish(context.Background(), u); !errors.Is(err, ErrInvalidUpdate) {
				t.Fatalf("Publish: %v; want ErrInvalidUpdate", err)
			}
		})
	}
}

func TestKeyNeverShowsSecret(t *testing.T) {
	k := Key{Name: "regent-key", Algorithm: "hmac-sha512", Secret: testSecret}
	var logged bytes.Buffer
	slog.New(slog.NewTextHandler(&logged, nil)).Info("publishing", "key", k)
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("publishing", "key", k)
	for _, s := range []string{
		k.String(), fmt.Sprint(k), fmt.Sprintf("%v %+v %#v %s", k, k, k, k),
		fmt.Sprintf("%v", Update{Key: k}), fmt.Sprintf("%+v", Update{Key: k}), logged.String(),
	} {
		if strings.Contains(s, testSecret) || strings.Contains(s, testSecret[:12]) {
			t.Errorf("%q shows the secret", s)
		}
		if !strings.Contains(s, "regent-key") {
			t.Errorf("%q does not name the key", s)
		}
	}
}

// signedReply returns a reply with rcode whose TSIG record carries tsigErr.
func signedReply(rcode int, tsigErr uint16) *dns.Msg {
	r := new(dns.Msg)
	r.Response = true
	r.Rcode = rcode
	r.Extra = []dns.RR{&dns.TSIG{Hdr: dns.RR_Header{Name: "regent-key.", Rrtype: dns.TypeTSIG, Class: dns.ClassANY}, Algorithm: dns.HmacSHA256, Error: tsigErr}}
	return r
}

func unsignedReply(rcode int) *dns.Msg {
	r := new(dns.Msg)
	r.Response = true
	r.Rcode = rcode
	return r
}

func TestReplyError(t *testing.T) {
	netErr := errors.New("connection reset by peer")
	for _, tc := range []struct {
		name   string
		r      *dns.Msg
		exErr  error
		ctxErr error
		is     []error // the error wraps each of these
		isNot  []error
		says   []string
	}{
		{name: "success", r: signedReply(dns.RcodeSuccess, 0)},
		{name: "NXRRSET", r: signedReply(dns.RcodeNXRrset, 0), is: []error{ErrStaleToken}, says: []string{"newer leader", "NXRRSET", `to hold "regent term=1 event=1"`, "nothing was changed"}},
		{name: "YXRRSET", r: signedReply(dns.RcodeYXRrset, 0), is: []error{ErrStaleToken}, says: []string{"YXRRSET"}},
		{name: "NXDOMAIN", r: signedReply(dns.RcodeNameError, 0), is: []error{ErrStaleToken}, says: []string{"NXDOMAIN"}},
		{name: "YXDOMAIN", r: unsignedReply(dns.RcodeYXDomain), is: []error{ErrStaleToken}, says: []string{"YXDOMAIN"}},
		{name: "NOTAUTH unsigned", r: unsignedReply(dns.RcodeNotAuth), is: []error{ErrAuth}, isNot: []error{ErrStaleToken}, says: []string{"check the TSIG key name and secret in dns_keys", "primary for the zone"}},
		{name: "BADSIG", r: signedReply(dns.RcodeNotAuth, dns.RcodeBadSig), exErr: dns.ErrSig, is: []error{ErrAuth}, says: []string{"BADSIG", "dns_keys", `"regent-key"`}},
		{name: "BADKEY", r: signedReply(dns.RcodeNotAuth, dns.RcodeBadKey), is: []error{ErrAuth}, says: []string{"BADKEY", "dns_keys"}},
		{name: "BADTIME", r: signedReply(dns.RcodeNotAuth, dns.RcodeBadTime), is: []error{ErrAuth}, says: []string{"BADTIME", "NTP"}},
		{name: "success whose signature does not verify", r: signedReply(dns.RcodeSuccess, 0), exErr: dns.ErrSig, is: []error{ErrAuth}, says: []string{"did not verify", "may have been applied"}},
		{name: "success unsigned", r: unsignedReply(dns.RcodeSuccess), is: []error{ErrAuth}, says: []string{"without a signature"}},
		{name: "REFUSED", r: unsignedReply(dns.RcodeRefused), is: []error{ErrRefused}, isNot: []error{ErrAuth}, says: []string{"REFUSED", "allow-update", "update-policy"}},
		{name: "NOTZONE", r: signedReply(dns.RcodeNotZone, 0), isNot: []error{ErrStaleToken, ErrAuth, ErrRefused}, says: []string{"NOTZONE", "zone example.test."}},
		{name: "SERVFAIL", r: signedReply(dns.RcodeServerFailure, 0), isNot: []error{ErrStaleToken, ErrAuth, ErrRefused}, says: []string{"SERVFAIL", "log"}},
		{name: "network error", exErr: netErr, is: []error{netErr}, isNot: []error{ErrStaleToken, ErrAuth, ErrRefused}, says: []string{"127.0.0.1:5353", "db.example.test."}},
		{name: "deadline", exErr: netErr, ctxErr: context.DeadlineExceeded, is: []error{netErr, context.DeadlineExceeded}, says: []string{"gave up"}},
		{name: "cancelled", exErr: netErr, ctxErr: context.Canceled, is: []error{context.Canceled}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := replyError(testUpdate(), tc.r, tc.exErr, tc.ctxErr)
			if len(tc.is) == 0 && len(tc.says) == 0 {
				if err != nil {
					t.Fatalf("replyError: %v; want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatal("replyError: nil; want an error")
			}
			for _, e := range tc.is {
				if !errors.Is(err, e) {
					t.Errorf("%v: does not wrap %v", err, e)
				}
			}
			for _, e := range tc.isNot {
				if errors.Is(err, e) {
					t.Errorf("%v: wraps %v", err, e)
				}
			}
			for _, s := range tc.says {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("%v: does not say %q", err, s)
				}
			}
			if strings.Contains(err.Error(), testSecret) {
				t.Errorf("%v: contains the secret", err)
			}
		})
	}
}

func TestReplyErrorFirstPublish(t *testing.T) {
	u := testUpdate()
	u.PrevToken = ""
	err := replyError(u, signedReply(dns.RcodeYXRrset, 0), nil, nil)
	if !errors.Is(err, ErrStaleToken) || !strings.Contains(err.Error(), "_regent-token.db.example.test. not to exist") {
		t.Fatalf("replyError: %v; want ErrStaleToken saying the token was expected not to exist", err)
	}
}

func TestWithPort(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:5353": "127.0.0.1:5353",
		"127.0.0.1":      "127.0.0.1:53",
		"ns1.example":    "ns1.example:53",
		"::1":            "[::1]:53",
		"[::1]:5353":     "[::1]:5353",
	} {
		if got := withPort(in); got != want {
			t.Errorf("withPort(%q) = %q; want %q", in, got, want)
		}
	}
}

func TestSameTarget(t *testing.T) {
	for _, tc := range []struct {
		found, target string
		want          bool
	}{
		{"192.0.2.1", "192.0.2.1", true},
		{"192.0.2.1", "::ffff:192.0.2.1", true},
		{"2001:db8::1", "2001:DB8:0::1", true},
		{"pg.example.net.", "PG.example.net", true},
		{"192.0.2.1", "192.0.2.2", false},
		{"pg.example.net.", "192.0.2.1", false},
	} {
		if got := sameTarget(tc.found, tc.target); got != tc.want {
			t.Errorf("sameTarget(%q, %q) = %v", tc.found, tc.target, got)
		}
	}
}

func TestLookupRejectsBadInput(t *testing.T) {
	if _, _, err := Lookup(context.Background(), "127.0.0.1:53", ""); !errors.Is(err, ErrInvalidUpdate) {
		t.Errorf("Lookup with no record: %v", err)
	}
	if _, _, err := Lookup(context.Background(), "", "db.example.test."); !errors.Is(err, ErrInvalidUpdate) {
		t.Errorf("Lookup with no server: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := Lookup(ctx, "127.0.0.1:53", "db.example.test."); !errors.Is(err, context.Canceled) {
		t.Errorf("Lookup with a cancelled context: %v", err)
	}
	if err := Publish(ctx, testUpdate()); !errors.Is(err, context.Canceled) {
		t.Errorf("Publish with a cancelled context: %v", err)
	}
}
