package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writePassfile writes content to a fresh file with the given mode and returns its path.
func writePassfile(t *testing.T, content string, mode os.FileMode) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "pgpass")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // independent of the umask
		t.Fatal(err)
	}
	return path
}

const passfile = `# regent's probe passwords
#db0.example:5432:postgres:regent:commented-out
db1.example:5432:postgres:regent:first
db1.example:5432:postgres:regent:shadowed-by-the-line-above
*:5433:*:regent:any-host-5433
10.0.0.7:*:app:*:any-port-any-user
  # not a comment: a line starting with spaces is a (non-matching) entry
ho\:st:5432:postgres:regent:escaped-host
db2.example:5432:my\\db:regent:back\\slash\:colon
db3.example:5432:postgres:regent:pw:trailing:fields:ignored
db4.example:5432:postgres:regent:crlf-line` + "\r" + `
localhost:5432:postgres:regent:via-socket
db5.example:5432:postgres:regent
db6.example:5432:postgres:*:
\*:5432:postgres:regent:literal-star-host
`

func TestPasswordLookup(t *testing.T) {
	p := Postgres{PasswordFile: writePassfile(t, passfile, 0o600)}
	cases := []struct {
		name, host   string
		port         uint16
		db, user     string
		wantPassword string
	}{
		{"first match wins", "db1.example", 5432, "postgres", "regent", "first"},
		{"no match on port", "db1.example", 5999, "postgres", "regent", ""},
		{"no match on user", "db1.example", 5432, "postgres", "other", ""},
		{"host wildcard", "anything", 5433, "x", "regent", "any-host-5433"},
		{"port and user wildcards", "10.0.0.7", 6000, "app", "someone", "any-port-any-user"},
		{"wildcard database does not match other user", "anything", 5433, "x", "nobody", ""},
		{"escaped colon in host", "ho:st", 5432, "postgres", "regent", "escaped-host"},
		{"escaped backslash and colon", "db2.example", 5432, `my\db`, "regent", `back\slash:colon`},
		{"password ends at unescaped colon", "db3.example", 5432, "postgres", "regent", "pw"},
		{"CRLF stripped", "db4.example", 5432, "postgres", "regent", "crlf-line"},
		{"unix socket means localhost", "/var/run/postgresql", 5432, "postgres", "regent", "via-socket"},
		{"empty host means localhost", "", 5432, "postgres", "regent", "via-socket"},
		{"too few fields never match", "db5.example", 5432, "postgres", "regent", ""},
		{"empty password", "db6.example", 5432, "postgres", "x", ""},
		{"escaped star is literal", "*", 5432, "postgres", "regent", "literal-star-host"},
		{"escaped star is not a wildcard", "db7.example", 5432, "postgres", "regent", ""},
		{"comment lines skipped", "#db0.example", 5432, "postgres", "regent", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := p.Password(tc.host, tc.port, tc.db, tc.user)
			if err != nil {
				t.Fatalf("Password: %v", err)
			}
			if got != tc.wantPassword {
				t.Errorf("Password(%q, %d, %q, %q) = %q, want %q", tc.host, tc.port, tc.db, tc.user, got, tc.wantPassword)
			}
		})
	}
}

func TestPasswordNoFile(t *testing.T) {
	got, err := Postgres{}.Password("db1.example", 5432, "postgres", "regent")
	if got != "" || err != nil {
		t.Errorf("without a password file: got %q, %v; want \"\", nil", got, err)
	}
}

func TestPasswordRereadsFile(t *testing.T) {
	path := writePassfile(t, "*:*:*:*:old\n", 0o600)
	p := Postgres{PasswordFile: path}
	if got, _ := p.Password("h", 1, "d", "u"); got != "old" {
		t.Fatalf("got %q, want old", got)
	}
	if err := os.WriteFile(path, []byte("*:*:*:*:new\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, _ := p.Password("h", 1, "d", "u"); got != "new" {
		t.Errorf("after editing the file: got %q, want new", got)
	}
}

func TestPassfilePermissions(t *testing.T) {
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o660, 0o602} {
		t.Run(fmt.Sprintf("%04o", mode), func(t *testing.T) {
			path := writePassfile(t, "*:*:*:*:pw\n", mode)
			_, err := Parse([]byte(good+"postgres:\n  password_file: "+path+"\n"), "w.yaml")
			if err == nil {
				t.Fatalf("Parse accepted a password file with mode %04o", mode)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error does not wrap ErrInvalid: %v", err)
			}
			for _, w := range []string{"w.yaml:10", "postgres.password_file", path, fmt.Sprintf("%04o", mode), "chmod 600 " + path} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			// Looking a password up is just as strict.
			_, err = Postgres{PasswordFile: path}.Password("h", 1, "d", "u")
			if err == nil || !strings.Contains(err.Error(), "chmod 600") {
				t.Errorf("Password from a mode %04o file: %v; want an error saying chmod 600", mode, err)
			}
		})
	}
	for _, mode := range []os.FileMode{0o600, 0o400} {
		path := writePassfile(t, "*:*:*:*:pw\n", mode)
		c, err := Parse([]byte(good+"postgres:\n  password_file: "+path+"\n"), "w.yaml")
		if err != nil {
			t.Errorf("mode %04o: %v", mode, err)
			continue
		}
		if c.Postgres.PasswordFile != path {
			t.Errorf("password_file = %q, want %q", c.Postgres.PasswordFile, path)
		}
	}
}

func TestPassfileNotRegularOrMissing(t *testing.T) {
	dir := t.TempDir()
	_, err := Parse([]byte(good+"postgres:\n  password_file: "+dir+"\n"), "w.yaml")
	if err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("a directory as password_file: %v", err)
	}
	missing := filepath.Join(dir, "gone")
	_, err = Postgres{PasswordFile: missing}.Password("h", 1, "d", "u")
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Errorf("Password with a missing file: %v; want fs.ErrNotExist naming %s", err, missing)
	}
}

// TestPasswordNeverPrinted is invariant 7 for the agent configuration: the password read from
// the password file appears in no error and no printed form of the configuration.
func TestPasswordNeverPrinted(t *testing.T) {
	const secret = "Sup3r-s3cret-PW"
	content := "db1.example:5432:postgres:regent:" + secret + "\n"
	path := writePassfile(t, content, 0o600)
	c, err := Parse([]byte(good+"postgres:\n  password_file: "+path+"\n"), "w.yaml")
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if got, err := c.Postgres.Password("db1.example", 5432, "postgres", "regent"); err != nil || got != secret {
		t.Fatalf("Password = %q, %v; want the secret", got, err)
	}
	var outputs []string
	for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
		for _, v := range []any{c.Postgres, &c.Postgres, *c, c} {
			outputs = append(outputs, fmt.Sprintf(verb, v))
		}
	}
	outputs = append(outputs, c.Postgres.String(), c.Postgres.GoString())
	if !strings.Contains(c.Postgres.String(), path) {
		t.Errorf("String() should name the password file: %s", c.Postgres.String())
	}
	// Every error path that reads the file: bad permissions at load time and at lookup time,
	// a file that is too large.
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	_, errLoad := Parse([]byte(good+"postgres:\n  password_file: "+path+"\n"), "w.yaml")
	_, errLookup := c.Postgres.Password("db1.example", 5432, "postgres", "regent")
	big := writePassfile(t, content+strings.Repeat("#"+secret+"\n", maxPassfileSize/len(secret)), 0o600)
	_, errBig := Postgres{PasswordFile: big}.Password("db1.example", 5432, "postgres", "regent")
	for _, err := range []error{errLoad, errLookup, errBig} {
		if err == nil {
			t.Fatal("expected an error")
		}
		outputs = append(outputs, err.Error(), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", err))
	}
	for _, out := range outputs {
		if strings.Contains(out, secret) {
			t.Errorf("output reveals the password: %s", out)
		}
	}
}
