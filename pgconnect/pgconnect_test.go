package pgconnect

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/regentdb/regent/pgtest"
)

const pw = "hunter2-secret"

func TestTargetNeverPrintsPassword(t *testing.T) {
	tg := Target{Host: "db1", Port: 5432, User: "regent", Password: pw, Node: "n1", Cluster: "orders"}
	var logs bytes.Buffer
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("x", "target", tg)
	for _, s := range []string{tg.String(), fmt.Sprint(tg), fmt.Sprintf("%v %+v %#v %s", tg, tg, tg, tg), logs.String()} {
		if strings.Contains(s, pw) {
			t.Errorf("printed form leaks the password: %s", s)
		}
	}
	if tg.String() != "orders/n1 (db1:5432)" {
		t.Errorf("String = %q", tg.String())
	}
	if !strings.Contains(fmt.Sprintf("%#v", tg), "REDACTED") {
		t.Errorf("GoString = %#v", tg)
	}
}

func TestValidate(t *testing.T) {
	if err := (Target{Host: "h", Port: 1, User: "u"}).Validate(); err != nil {
		t.Error(err)
	}
	err := (Target{SSLMode: "bogus", Password: pw}).Validate()
	for _, want := range []string{"host is empty", "port is 0", "user is empty", "sslmode \"bogus\""} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want it to say %q", err, want)
		}
	}
	if _, err := Connect(context.Background(), Target{Password: pw}, "t"); err == nil || strings.Contains(err.Error(), pw) {
		t.Errorf("Connect with an invalid target: %v", err)
	}
}

func TestConnectErrorHasNoPassword(t *testing.T) {
	bh := pgtest.StartBlackHole(t)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := Connect(ctx, Target{Host: bh.Host(), Port: uint16(bh.Port()), User: "u", Password: pw, Node: "n"}, "t")
	if err == nil || !errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), pw) || !strings.Contains(err.Error(), "n ("+bh.Addr()+")") {
		t.Errorf("Connect to a hung server: %v", err)
	}
}

func TestPoll(t *testing.T) {
	n := 0
	if err := Poll(context.Background(), func(context.Context) (bool, error) { n++; return n == 3, nil }); err != nil || n != 3 {
		t.Errorf("Poll = %v after %d calls", err, n)
	}
	fatal := errors.New("fatal")
	if err := Poll(context.Background(), func(context.Context) (bool, error) { return false, fatal }); err != fatal {
		t.Errorf("a non-retryable error: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	transient := errors.New("transient")
	err := Poll(ctx, func(context.Context) (bool, error) { return false, Retry(transient) })
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, transient) {
		t.Errorf("timeout: %v, want both the deadline and the last error", err)
	}
	if Retry(nil) != nil {
		t.Error("Retry(nil) != nil")
	}
}
