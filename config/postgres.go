package config

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"
)

// Postgres is the postgres section of the agent configuration: how a witness logs in to the
// PostgreSQL nodes it probes. It holds the password file's path, never a password, so a
// Postgres value may be logged and printed.
type Postgres struct {
	// User is the role used for probing (default "regent").
	User string `yaml:"user"`
	// Database is the database probes connect to (default "postgres").
	Database string `yaml:"database"`
	// PasswordFile is an optional libpq password file
	// (host:port:database:username:password per line). It must be a regular file readable by
	// its owner only (chmod 600).
	PasswordFile string `yaml:"password_file"`
	// SSLMode is libpq's sslmode: disable, allow, prefer (default), require, verify-ca or
	// verify-full.
	SSLMode string `yaml:"sslmode"`
}

// String describes p without any secret (it holds none: only the password file's path).
func (p Postgres) String() string {
	return fmt.Sprintf("postgres{user: %s, database: %s, sslmode: %s, password_file: %s}",
		p.User, p.Database, p.SSLMode, orNone(p.PasswordFile))
}

// GoString is String, so that %#v prints the same safe description.
func (p Postgres) GoString() string { return "config." + p.String() }

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// maxPassfileSize bounds how much of a password file is read; real ones are a few lines.
const maxPassfileSize = 1 << 20

// Password looks up the password for a connection in p.PasswordFile, the way libpq reads a
// passfile: the first line whose host, port, database and username fields all match wins; a
// field of exactly "*" matches anything; "\:" and "\\" stand for ':' and '\'; lines starting
// with '#' are comments; CRLF line ends are accepted. A host that is empty or a Unix-socket
// directory (starting with '/' or '@') matches "localhost", as in libpq.
//
// It returns "" and no error when no password file is configured or no line matches. The file
// is read again on every call, so an edited file takes effect at the next connection; it must
// still be a regular file readable by its owner only, or Password returns an error.
// Errors never contain the file's contents.
func (p Postgres) Password(host string, port uint16, database, user string) (string, error) {
	if p.PasswordFile == "" {
		return "", nil
	}
	f, err := openPassfile(p.PasswordFile)
	if err != nil {
		return "", fmt.Errorf("postgres password_file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxPassfileSize+1))
	if err != nil {
		return "", fmt.Errorf("postgres password_file: read %s: %w", p.PasswordFile, err)
	}
	if len(data) > maxPassfileSize {
		return "", fmt.Errorf("postgres password_file: %s is larger than %d bytes; a password file holds a few lines", p.PasswordFile, maxPassfileSize)
	}
	if host == "" || strings.HasPrefix(host, "/") || strings.HasPrefix(host, "@") {
		host = "localhost"
	}
	want := [4]string{host, strconv.Itoa(int(port)), database, user}
	for line := range strings.SplitSeq(string(data), "\n") {
		line = strings.TrimSuffix(line, "\r")
		if line == "" || line[0] == '#' {
			continue
		}
		if pw, ok := passfileMatch(line, want); ok {
			return pw, nil
		}
	}
	return "", nil
}

// passfileMatch reports whether the first four fields of a passfile line match want, and if so
// returns the line's password (its fifth field, unescaped).
func passfileMatch(line string, want [4]string) (string, bool) {
	rest := line
	for _, w := range want {
		var ok bool
		if rest, ok = matchField(rest, w); !ok {
			return "", false
		}
	}
	return unescapeField(rest), true
}

// matchField compares the first ':'-terminated field of s with want and returns what follows
// the ':'. A field of exactly "*" matches anything. A line with too few fields never matches.
func matchField(s, want string) (rest string, ok bool) {
	if strings.HasPrefix(s, "*:") {
		return s[2:], true
	}
	j := 0 // bytes of want matched so far
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '\\' && i+1 < len(s) {
			i++
			c = s[i]
		} else if c == ':' {
			return s[i+1:], j == len(want)
		}
		if j == len(want) || want[j] != c {
			return "", false
		}
		j++
	}
	return "", false
}

// unescapeField returns the first field of s with its backslash escapes resolved; it ends at
// the first unescaped ':' (libpq ignores anything after the password).
func unescapeField(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '\\' && i+1 < len(s) {
			i++
			c = s[i]
		} else if c == ':' {
			break
		}
		b.WriteByte(c)
	}
	return b.String()
}

// openPassfile opens a password file after checking that it is a regular file that group and
// others cannot access. libpq only warns about such a file and ignores it; regent refuses it.
func openPassfile(path string) (*os.File, error) {
	return openPrivateFile(path, "password_file", "lines host:port:database:username:password")
}

// openPrivateFile opens a file holding secrets after checking that it is a regular file that
// group and others cannot access; key names the configuration key and content what belongs in
// the file, for the error messages.
func openPrivateFile(path, key, content string) (*os.File, error) {
	f, err := os.Open(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("%s does not exist: create it with %s and chmod 600 %s, or remove the key: %w", path, content, path, err)
	case errors.Is(err, fs.ErrPermission):
		return nil, fmt.Errorf("%s cannot be read by this user: make it owned by the user regent runs as and chmod 600 %s: %w", path, path, err)
	case err != nil:
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("stat %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s is not a regular file (%v); point %s at a file with %s", path, st.Mode().Type(), key, content)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		f.Close()
		return nil, fmt.Errorf("%s has mode %04o: group or others may access it; run chmod 600 %s", path, perm, path)
	}
	return f, nil
}

// checkPassfile reports whether path could be used as a password file now.
func checkPassfile(path string) error {
	f, err := openPassfile(path)
	if err != nil {
		return err
	}
	return f.Close()
}
