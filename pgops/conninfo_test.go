package pgops

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

func TestParseConninfo(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []Param
	}{
		{"", nil},
		{"   \t\n", nil},
		{"host=db1", []Param{{"host", "db1"}}},
		{"host=db1 port=5432", []Param{{"host", "db1"}, {"port", "5432"}}},
		{"  host = db1\tport=  5432  ", []Param{{"host", "db1"}, {"port", "5432"}}},
		{`password='it\'s'`, []Param{{"password", "it's"}}},
		{`password='back\\slash'`, []Param{{"password", `back\slash`}}},
		{`password='a b  c'`, []Param{{"password", "a b  c"}}},
		{`password=a\ b`, []Param{{"password", "a b"}}},
		{`password=x\'y`, []Param{{"password", "x'y"}}},
		{`password='\q'`, []Param{{"password", "q"}}},
		{"application_name=''", []Param{{"application_name", ""}}},
		{"application_name='' host=h", []Param{{"application_name", ""}, {"host", "h"}}},
		// As in libpq, blanks after '=' are skipped, so "a= b=c" gives a the value "b=c".
		{"a= b=c", []Param{{"a", "b=c"}}},
		{"options='-c statement_timeout=5s'", []Param{{"options", "-c statement_timeout=5s"}}},
		{"host=a,b port=5432,5433", []Param{{"host", "a,b"}, {"port", "5432,5433"}}},
		{"zz_unknown=1 host=h yy_unknown='2'", []Param{{"zz_unknown", "1"}, {"host", "h"}, {"yy_unknown", "2"}}},
		{"host=a host=b", []Param{{"host", "a"}, {"host", "b"}}},
		{"host='h'port=1", []Param{{"host", "h"}, {"port", "1"}}},
		{"user=postgres passfile='/tmp/x y/.pgpass' channel_binding=prefer host=127.0.0.1 port=16032 sslmode=disable",
			[]Param{{"user", "postgres"}, {"passfile", "/tmp/x y/.pgpass"}, {"channel_binding", "prefer"}, {"host", "127.0.0.1"}, {"port", "16032"}, {"sslmode", "disable"}}},
	} {
		c, err := ParseConninfo(tc.in)
		if err != nil {
			t.Errorf("ParseConninfo(%q): %v", tc.in, err)
			continue
		}
		if got := c.Params(); !reflect.DeepEqual(got, tc.want) && !(len(got) == 0 && len(tc.want) == 0) {
			t.Errorf("ParseConninfo(%q) = %q, want %q", tc.in, got, tc.want)
		}
		// Round trip.
		again, err := ParseConninfo(c.Encode())
		if err != nil || !reflect.DeepEqual(again.Params(), c.Params()) {
			t.Errorf("round trip of %q via %q: %q, %v", tc.in, c.Encode(), again.Params(), err)
		}
	}
}

func TestParseConninfoErrors(t *testing.T) {
	for _, in := range []string{
		"host",
		"host db1",
		"=db1",
		"host=db1 port",
		"password='secret",
		`password='secret\'`,
		"password='it''s'", // libpq: after the closing quote, "'s'" is a keyword without '='
		"postgresql://u:secret@h/db",
		"postgres://h",
	} {
		_, err := ParseConninfo(in)
		if !errors.Is(err, ErrConninfoSyntax) {
			t.Errorf("ParseConninfo(%q) = %v, want a syntax error", in, err)
			continue
		}
		if strings.Contains(err.Error(), "secret") || strings.Contains(err.Error(), "db1") {
			t.Errorf("error %q repeats the connection string", err)
		}
	}
}

func TestConninfoEdit(t *testing.T) {
	c, err := ParseConninfo("user=rep host=old hostaddr=10.0.0.1 password='p w' port=5432 application_name=s2 host=older x_unknown=1")
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := c.Get("host"); v != "older" {
		t.Errorf("Get(host) = %q, want the last occurrence", v)
	}
	c.Set("host", "new")
	c.Set("port", "6543")
	c.Delete("hostaddr")
	c.Set("sslmode", "require")
	want := "user=rep host=new password='p w' port=6543 application_name=s2 x_unknown=1 sslmode=require"
	if got := c.Encode(); got != want {
		t.Errorf("Encode = %q\nwant      %q", got, want)
	}
	if _, ok := c.Get("hostaddr"); ok {
		t.Error("hostaddr still there")
	}
}

func TestConninfoEncodeQuoting(t *testing.T) {
	var c Conninfo
	for _, kv := range [][2]string{{"a", ""}, {"b", "x y"}, {"c", `it's`}, {"d", `\`}, {"e", "k=v"}, {"f", "plain"}, {"g", "tab\there"}} {
		c.Set(kv[0], kv[1])
	}
	want := `a='' b='x y' c='it\'s' d='\\' e='k=v' f=plain g='tab` + "\t" + `here'`
	if got := c.Encode(); got != want {
		t.Errorf("Encode = %q, want %q", got, want)
	}
}

func TestConninfoRedacted(t *testing.T) {
	c, err := ParseConninfo("host=h password=secret-pw sslpassword='key pw' user=u")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{c.String(), fmt.Sprint(c), fmt.Sprintf("%v %+v %#v %s", c, c, c, c), fmt.Sprintf("%+v", struct{ C Conninfo }{c})} {
		if strings.Contains(s, "secret-pw") || strings.Contains(s, "key pw") {
			t.Errorf("printed form leaks a password: %s", s)
		}
	}
	if !strings.Contains(c.String(), "password=REDACTED") || !strings.Contains(c.String(), "user=u") {
		t.Errorf("String = %q", c.String())
	}
	if !strings.Contains(c.Encode(), "password=secret-pw") {
		t.Errorf("Encode lost the password: %q", c.Encode())
	}
}
