package pgops

import (
	"errors"
	"fmt"
	"strings"
)

// Conninfo is a libpq keyword/value connection string ("host=db1 port=5432 user='a b'") as a
// list of parameters in their original order, unknown keywords and duplicates included, so that
// it can be edited and written back without losing anything.
//
// It usually holds a password (primary_conninfo does): String redacts it; Encode gives the real
// string, to be passed to the server and nowhere else.
type Conninfo struct {
	params []Param
}

// Param is one keyword/value pair of a Conninfo.
type Param struct {
	Key, Value string
}

// ErrConninfoSyntax is wrapped by ParseConninfo's errors. They give a byte offset and what was
// expected, never any part of the string (which may hold a password).
var ErrConninfoSyntax = errors.New("connection string syntax error")

// secretKeys are parameters whose values String redacts.
var secretKeys = map[string]bool{"password": true, "sslpassword": true}

// isSpace is libpq's isspace in the C locale.
func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'
}

// ParseConninfo parses a keyword/value connection string as libpq does: whitespace-separated
// `keyword = value` pairs (spaces around '=' allowed); a value is either single-quoted, where a
// backslash escapes the next character (\' and \\), or unquoted up to the next whitespace, where
// a backslash also escapes the next character. An empty value must be a pair of single quotes.
// Keywords are not checked against libpq's list. URIs (postgresql://...) are refused: only
// keyword/value strings are rewritten.
func ParseConninfo(s string) (Conninfo, error) {
	if strings.HasPrefix(s, "postgresql://") || strings.HasPrefix(s, "postgres://") {
		return Conninfo{}, fmt.Errorf("%w: a URI (postgresql://...) is not supported; write the connection string as keyword=value pairs", ErrConninfoSyntax)
	}
	var c Conninfo
	i, n := 0, len(s)
	for {
		for i < n && isSpace(s[i]) {
			i++
		}
		if i >= n {
			return c, nil
		}
		start := i
		for i < n && !isSpace(s[i]) && s[i] != '=' {
			i++
		}
		key := s[start:i]
		for i < n && isSpace(s[i]) {
			i++
		}
		if i >= n || s[i] != '=' {
			return Conninfo{}, fmt.Errorf("%w: missing \"=\" after the keyword at offset %d", ErrConninfoSyntax, start)
		}
		if key == "" {
			return Conninfo{}, fmt.Errorf("%w: \"=\" without a keyword at offset %d", ErrConninfoSyntax, i)
		}
		i++ // '='
		for i < n && isSpace(s[i]) {
			i++
		}
		var v strings.Builder
		if i < n && s[i] == '\'' {
			open := i
			i++
			closed := false
			for i < n {
				switch s[i] {
				case '\\':
					i++
					if i < n {
						v.WriteByte(s[i])
						i++
					}
				case '\'':
					i++
					closed = true
				default:
					v.WriteByte(s[i])
					i++
				}
				if closed {
					break
				}
			}
			if !closed {
				return Conninfo{}, fmt.Errorf("%w: unterminated quoted value starting at offset %d", ErrConninfoSyntax, open)
			}
		} else {
			for i < n && !isSpace(s[i]) {
				if s[i] == '\\' {
					i++
					if i < n {
						v.WriteByte(s[i])
						i++
					}
					continue
				}
				v.WriteByte(s[i])
				i++
			}
		}
		c.params = append(c.params, Param{Key: key, Value: v.String()})
	}
}

// Params returns a copy of the parameters in order.
func (c Conninfo) Params() []Param { return append([]Param(nil), c.params...) }

// Get returns the value libpq would use for key (the last occurrence) and whether it is set.
func (c Conninfo) Get(key string) (string, bool) {
	for i := len(c.params) - 1; i >= 0; i-- {
		if c.params[i].Key == key {
			return c.params[i].Value, true
		}
	}
	return "", false
}

// Set gives key the value: in place of its first occurrence (later duplicates are dropped, so
// the new value is the one in effect), or appended at the end when key is not present.
func (c *Conninfo) Set(key, value string) {
	out := c.params[:0:0]
	found := false
	for _, p := range c.params {
		if p.Key != key {
			out = append(out, p)
			continue
		}
		if !found {
			out = append(out, Param{Key: key, Value: value})
			found = true
		}
	}
	if !found {
		out = append(out, Param{Key: key, Value: value})
	}
	c.params = out
}

// Delete removes every occurrence of key.
func (c *Conninfo) Delete(key string) {
	out := c.params[:0:0]
	for _, p := range c.params {
		if p.Key != key {
			out = append(out, p)
		}
	}
	c.params = out
}

// Encode returns the connection string, secrets included, quoting values only where needed.
// ParseConninfo(c.Encode()) gives c back.
func (c Conninfo) Encode() string {
	return c.encode(false)
}

// String returns the connection string with password and sslpassword values redacted; safe to
// log.
func (c Conninfo) String() string {
	return c.encode(true)
}

func (c Conninfo) encode(redact bool) string {
	var b strings.Builder
	for i, p := range c.params {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(p.Key)
		b.WriteByte('=')
		v := p.Value
		if redact && secretKeys[p.Key] {
			v = "REDACTED"
		}
		b.WriteString(quoteConnValue(v))
	}
	return b.String()
}

// quoteConnValue writes v as a conninfo value: as is when it needs no quoting, else in single
// quotes with \ and ' escaped.
func quoteConnValue(v string) string {
	plain := v != ""
	for i := 0; i < len(v) && plain; i++ {
		if isSpace(v[i]) || v[i] == '\'' || v[i] == '\\' || v[i] == '=' {
			plain = false
		}
	}
	if plain {
		return v
	}
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

// GoString is like String: %#v never prints a password either.
func (c Conninfo) GoString() string {
	return fmt.Sprintf("pgops.Conninfo(%q)", c.String())
}
