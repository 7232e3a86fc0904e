package alert

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// guard bounds every wait in these tests. It is a failure guard, not a timing assertion: a
// healthy run never comes near it.
const guard = 20 * time.Second

// logBuf collects JSON log lines; the worker writes concurrently with the test reading.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// records returns the logged records whose msg is msg.
func (l *logBuf) records(t *testing.T, msg string) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(l.String()))
	for sc.Scan() {
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("log line is not JSON: %q: %v", sc.Text(), err)
		}
		if rec["msg"] == msg {
			out = append(out, rec)
		}
	}
	return out
}

func newLogger() (*slog.Logger, *logBuf) {
	buf := &logBuf{}
	return slog.New(slog.NewJSONHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

// newNotifier makes a Notifier with fast backoffs that is closed when the test ends.
func newNotifier(t *testing.T, opts Options) (*Notifier, *logBuf) {
	t.Helper()
	logger, buf := newLogger()
	opts.Logger = logger
	if opts.BackoffBase == 0 {
		opts.BackoffBase = time.Millisecond
	}
	if opts.BackoffMax == 0 {
		opts.BackoffMax = 4 * time.Millisecond
	}
	n := New(opts)
	t.Cleanup(func() {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_ = n.Close(ctx)
	})
	return n, buf
}

// waitFor polls cond until it holds, failing the test after guard.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(guard)
	defer deadline.Stop()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			t.Fatalf("timed out waiting until %s", what)
		case <-tick.C:
		}
	}
}

// recv receives from ch, failing the test after guard.
func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(guard):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

func statsAre(n *Notifier, sent, failed, dropped uint64) func() bool {
	return func() bool {
		s, f, d := n.Stats()
		return s == sent && f == failed && d == dropped
	}
}

// hungReceiver is a webhook that reports each request's alert message on got and then does not
// answer until released (or until the client gives up).
type hungReceiver struct {
	srv      *httptest.Server
	got      chan string   // message of each request, on arrival
	returned chan struct{} // one value each time the handler returns
	release  func()        // lets every current and future request answer 200
}

func newHungReceiver(t *testing.T) *hungReceiver {
	h := &hungReceiver{got: make(chan string, 1000), returned: make(chan struct{}, 1000)}
	released := make(chan struct{})
	var once sync.Once
	h.release = func() { once.Do(func() { close(released) }) }
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() { h.returned <- struct{}{} }()
		var a Alert
		if err := json.NewDecoder(r.Body).Decode(&a); err != nil {
			t.Errorf("receiver: bad JSON: %v", err)
		}
		h.got <- a.Message
		select {
		case <-released:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(h.srv.Close)
	t.Cleanup(h.release) // runs before srv.Close, which waits for handlers
	return h
}

func TestWebhookReceivesJSON(t *testing.T) {
	type request struct {
		method, contentType string
		body                []byte
	}
	reqs := make(chan request, 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var b bytes.Buffer
		_, _ = b.ReadFrom(r.Body)
		reqs <- request{r.Method, r.Header.Get("Content-Type"), b.Bytes()}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	if !strings.HasPrefix(srv.URL, "http://127.0.0.1:") {
		t.Fatalf("receiver is not on 127.0.0.1: %s", srv.URL)
	}
	n, _ := newNotifier(t, Options{WebhookURL: srv.URL + "/hook"})

	at := time.Date(2025, 3, 4, 5, 6, 7, 123456789, time.FixedZone("x", 3600))
	labels := map[string]string{"region": "us-east", "node": "db1"}
	fields := map[string]any{"lag_bytes": 1234, "lsn": "0/3000060", "nested": map[string]any{"ok": true}}
	n.Notify(Alert{Kind: "failover_started", Severity: SeverityCritical, Cluster: "orders",
		Message: "primary db1 unreachable from 2 regions", At: at, Labels: labels, Fields: fields})
	// Notify encoded the alert already: changing the maps now must not change what is sent
	// (and must not race with the worker).
	labels["region"] = "changed"
	fields["lsn"] = "changed"

	req := recv(t, reqs, "the webhook request")
	if req.method != http.MethodPost || req.contentType != "application/json" {
		t.Errorf("request: %s with Content-Type %q, want POST application/json", req.method, req.contentType)
	}
	var got map[string]any
	if err := json.Unmarshal(req.body, &got); err != nil {
		t.Fatalf("body is not JSON: %s: %v", req.body, err)
	}
	want := map[string]any{
		"kind":     "failover_started",
		"severity": "critical",
		"cluster":  "orders",
		"message":  "primary db1 unreachable from 2 regions",
		"at":       "2025-03-04T05:06:07.123456789+01:00",
		"labels":   map[string]any{"region": "us-east", "node": "db1"},
		"fields":   map[string]any{"lag_bytes": 1234.0, "lsn": "0/3000060", "nested": map[string]any{"ok": true}},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("body:\n got %v\nwant %v", got, want)
	}
	parsed, err := time.Parse(time.RFC3339Nano, got["at"].(string))
	if err != nil || !parsed.Equal(at) {
		t.Errorf("at %v does not parse back to %v: %v", got["at"], at, err)
	}
	waitFor(t, "the alert counts as sent", statsAre(n, 1, 0, 0))
}

func TestNotifyStampsTimeAndOmitsEmptyMaps(t *testing.T) {
	bodies := make(chan []byte, 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var b bytes.Buffer
		_, _ = b.ReadFrom(r.Body)
		bodies <- b.Bytes()
	}))
	t.Cleanup(srv.Close)
	n, _ := newNotifier(t, Options{WebhookURL: srv.URL})
	now := time.Date(2030, 1, 2, 3, 4, 5, 6, time.UTC)
	n.now = func() time.Time { return now }
	n.Notify(Alert{Kind: "k", Severity: SeverityInfo, Message: "m"})
	body := recv(t, bodies, "the webhook request")
	want := `{"kind":"k","severity":"info","cluster":"","message":"m","at":"2030-01-02T03:04:05.000000006Z"}`
	if string(body) != want {
		t.Errorf("body\n got %s\nwant %s", body, want)
	}
}

func TestRetries(t *testing.T) {
	cases := []struct {
		name         string
		statuses     []int // answers in order; 200 once exhausted
		retries      int
		wantAttempts int
		wantSent     uint64
	}{
		{"fails twice then succeeds", []int{503, 500}, 3, 3, 1},
		{"408 and 429 are retried", []int{429, 408, 502}, 3, 4, 1},
		{"out of retries", []int{500, 500, 500, 500}, 2, 3, 0},
		{"no retries", []int{503}, 0, 1, 0},
		{"400 is permanent", []int{400}, 3, 1, 0},
		{"404 is permanent", []int{404}, 3, 1, 0},
		{"401 is permanent", []int{401}, 3, 1, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var attempts atomic.Int32
			delivered := make(chan string, 10)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				i := int(attempts.Add(1)) - 1
				if i < len(tc.statuses) {
					if tc.statuses[i] == http.StatusTooManyRequests {
						w.Header().Set("Retry-After", "1") // capped by BackoffMax
					}
					w.WriteHeader(tc.statuses[i])
					return
				}
				var a Alert
				_ = json.NewDecoder(r.Body).Decode(&a)
				delivered <- a.Message
			}))
			t.Cleanup(srv.Close)
			n, logs := newNotifier(t, Options{WebhookURL: srv.URL, Retries: tc.retries})
			n.Notify(Alert{Kind: "k", Message: "hello"})
			if tc.wantSent == 1 {
				if got := recv(t, delivered, "the retried alert"); got != "hello" {
					t.Errorf("delivered %q", got)
				}
				waitFor(t, "sent=1", statsAre(n, 1, 0, 0))
				if len(logs.records(t, "alert delivered to webhook after retrying")) != 1 {
					t.Errorf("no log line about the delivery after retrying:\n%s", logs)
				}
			} else {
				waitFor(t, "failed=1", statsAre(n, 0, 1, 0))
				recs := logs.records(t, "alert not delivered to webhook")
				if len(recs) != 1 || recs[0]["attempts"] != float64(tc.wantAttempts) || recs[0]["level"] != "ERROR" {
					t.Errorf("failure log: %v", recs)
				}
			}
			if got := int(attempts.Load()); got != tc.wantAttempts {
				t.Errorf("attempts = %d, want %d", got, tc.wantAttempts)
			}
		})
	}
}

func TestPerAttemptTimeout(t *testing.T) {
	h := newHungReceiver(t)
	n, logs := newNotifier(t, Options{WebhookURL: h.srv.URL, Timeout: 20 * time.Millisecond, Retries: 1})
	n.Notify(Alert{Kind: "k", Message: "slow"})
	recv(t, h.got, "first attempt")
	recv(t, h.got, "the retry after the first attempt timed out")
	waitFor(t, "failed=1", statsAre(n, 0, 1, 0))
	recs := logs.records(t, "alert not delivered to webhook")
	if len(recs) != 1 || !strings.Contains(fmt.Sprint(recs[0]["error"]), "no answer within 20ms") {
		t.Errorf("failure log should say the receiver did not answer in time: %v", recs)
	}
}

func TestNotifyNeverBlocksOnHungWebhook(t *testing.T) {
	h := newHungReceiver(t)
	const queue, total = 8, 2000
	n, _ := newNotifier(t, Options{WebhookURL: h.srv.URL, Timeout: time.Hour, QueueSize: queue})

	n.Notify(Alert{Kind: "k", Message: "first"})
	recv(t, h.got, "the first alert to reach the hung receiver")

	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range total {
			n.Notify(Alert{Kind: "k", Message: fmt.Sprint(i)})
		}
	}()
	recv(t, done, "Notify to return while the webhook hangs")
	select {
	case <-h.returned:
		t.Fatal("the receiver answered; the test proves nothing")
	default: // still hung: Notify returned without waiting for it
	}
	if _, _, dropped := n.Stats(); dropped != total-queue {
		t.Errorf("dropped = %d, want %d", dropped, total-queue)
	}
}

func TestNotifyNeverBlocksOnClosedPortAndHidesToken(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	const token = "s3cr3t-T0KEN"
	url := "http://user:" + token + "@" + addr + "/services/" + token + "?key=" + token
	n, logs := newNotifier(t, Options{WebhookURL: url, Retries: 2})

	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 10 {
			n.Notify(Alert{Kind: "k", Message: "to nowhere"})
		}
	}()
	recv(t, done, "Notify to return with a closed webhook port")
	waitFor(t, "all ten to fail", statsAre(n, 0, 10, 0))

	out := logs.String()
	if strings.Contains(out, token) {
		t.Errorf("logs reveal the webhook token:\n%s", out)
	}
	recs := logs.records(t, "alert not delivered to webhook")
	if len(recs) != 10 || recs[0]["webhook"] != "http://"+addr+"/…" || recs[0]["attempts"] != 3.0 {
		t.Errorf("failure logs should name the redacted webhook and 3 attempts: %v", recs)
	}
	if len(recs) > 0 && !strings.Contains(fmt.Sprint(recs[0]["error"]), "connection refused") {
		t.Errorf("failure log should say why: %v", recs[0]["error"])
	}
}

func TestQueueOverflowDropsOldest(t *testing.T) {
	h := newHungReceiver(t)
	n, logs := newNotifier(t, Options{WebhookURL: h.srv.URL, Timeout: time.Hour, QueueSize: 2})
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	n.now = func() time.Time { return now } // only Notify reads it, from this goroutine

	n.Notify(Alert{Kind: "k", Message: "a0"})
	recv(t, h.got, "a0 in flight")
	for i := 1; i <= 5; i++ { // the queue keeps a4, a5
		n.Notify(Alert{Kind: "k", Message: fmt.Sprintf("a%d", i)})
	}
	if s, f, d := n.Stats(); s != 0 || f != 0 || d != 3 {
		t.Fatalf("stats = %d, %d, %d; want 0 sent, 0 failed, 3 dropped", s, f, d)
	}
	recs := logs.records(t, "alerts dropped")
	if len(recs) != 1 || recs[0]["dropped"] != 1.0 || recs[0]["level"] != "WARN" {
		t.Fatalf("want one log line about the first drop within the minute, got %v", recs)
	}

	now = now.Add(59 * time.Second)
	n.Notify(Alert{Kind: "k", Message: "a6"}) // drops a4, not logged yet
	if got := len(logs.records(t, "alerts dropped")); got != 1 {
		t.Fatalf("logged about drops %d times within a minute", got)
	}
	now = now.Add(time.Second)
	n.Notify(Alert{Kind: "k", Message: "a7"}) // drops a5; a minute since the last report
	recs = logs.records(t, "alerts dropped")
	if len(recs) != 2 || recs[1]["dropped"] != 4.0 || recs[1]["dropped_total"] != 5.0 {
		t.Fatalf("second drop report should count the 4 drops since the first: %v", recs)
	}

	h.release()
	var got []string
	for range 2 {
		got = append(got, recv(t, h.got, "queued alerts after the receiver recovered"))
	}
	if strings.Join(got, ",") != "a6,a7" {
		t.Errorf("delivered after a0: %v; want the newest, a6,a7", got)
	}
	waitFor(t, "3 sent, 5 dropped", statsAre(n, 3, 0, 5))
}

func TestCloseDrainsQueue(t *testing.T) {
	var mu sync.Mutex
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var a Alert
		_ = json.NewDecoder(r.Body).Decode(&a)
		mu.Lock()
		got = append(got, a.Message)
		mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	n, _ := newNotifier(t, Options{WebhookURL: srv.URL, QueueSize: 16})
	for i := range 10 {
		n.Notify(Alert{Kind: "k", Message: fmt.Sprint(i)})
	}
	if err := n.Close(context.Background()); err != nil {
		t.Fatalf("Close: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(got, ",") != "0,1,2,3,4,5,6,7,8,9" {
		t.Errorf("received %v; want all ten in order", got)
	}
	if s, f, d := n.Stats(); s != 10 || f != 0 || d != 0 {
		t.Errorf("stats = %d, %d, %d; want 10 sent", s, f, d)
	}
	if err := n.Close(context.Background()); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestCloseReturnsWhenContextEndsWithHungReceiver(t *testing.T) {
	h := newHungReceiver(t)
	n, logs := newNotifier(t, Options{WebhookURL: h.srv.URL, Timeout: time.Hour, Retries: 5})
	for i := range 3 {
		n.Notify(Alert{Kind: "k", Message: fmt.Sprint(i)})
	}
	recv(t, h.got, "the first alert in flight")

	ctx, cancel := context.WithCancel(context.Background())
	closed := make(chan error, 1)
	go func() { closed <- n.Close(ctx) }()
	select {
	case err := <-closed:
		t.Fatalf("Close returned before its context ended, with the receiver hung: %v", err)
	default:
	}
	cancel()
	err := recv(t, closed, "Close to return after its context ended")
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "3 alert(s) undelivered") {
		t.Errorf("Close: %v; want context.Canceled and a count of 3 undelivered", err)
	}
	if s, f, d := n.Stats(); s != 0 || f != 1 || d != 2 {
		t.Errorf("stats = %d, %d, %d; want 1 failed (in flight) and 2 dropped", s, f, d)
	}
	if len(logs.records(t, "alert delivery abandoned: notifier closed")) != 1 {
		t.Errorf("the abandoned delivery is not logged:\n%s", logs)
	}

	// After Close, alerts are still logged but not queued.
	n.Notify(Alert{Kind: "late", Message: "after close"})
	if _, _, d := n.Stats(); d != 3 {
		t.Errorf("an alert after Close should count as dropped; dropped = %d", d)
	}
	if len(logs.records(t, "alert")) != 4 {
		t.Errorf("every alert, even after Close, is logged:\n%s", logs)
	}
}

func TestLogOnly(t *testing.T) {
	n, logs := newNotifier(t, Options{})
	n.Notify(Alert{Kind: "lag_high", Severity: SeverityWarning, Cluster: "orders", Message: "replica lag 75s",
		Labels: map[string]string{"region": "eu-west", "node": "db3"}, Fields: map[string]any{"lag_seconds": 75}})
	recs := logs.records(t, "alert")
	if len(recs) != 1 {
		t.Fatalf("want exactly one log line, got:\n%s", logs)
	}
	r := recs[0]
	want := map[string]any{"level": "WARN", "kind": "lag_high", "severity": "warning", "cluster": "orders",
		"message": "replica lag 75s", "labels": map[string]any{"region": "eu-west", "node": "db3"}}
	for k, v := range want {
		if fmt.Sprint(r[k]) != fmt.Sprint(v) {
			t.Errorf("log attribute %s = %v, want %v", k, r[k], v)
		}
	}
	if s, f, d := n.Stats(); s+f+d != 0 {
		t.Errorf("log-only stats = %d, %d, %d; want zeros", s, f, d)
	}
	if err := n.Close(context.Background()); err != nil {
		t.Errorf("Close: %v", err)
	}
}

func TestInvalidWebhookURLMeansLogOnly(t *testing.T) {
	for _, u := range []string{"ftp://hooks.example/T0KEN", "https:///T0KEN", "http://[::1/T0KEN"} {
		n, logs := newNotifier(t, Options{WebhookURL: u})
		n.Notify(Alert{Kind: "k", Message: "m"})
		if len(logs.records(t, "alert webhook disabled: alerts are only logged; fix alerts.webhook_url")) != 1 {
			t.Errorf("%s: New should log that the webhook is disabled:\n%s", u, logs)
		}
		if len(logs.records(t, "alert")) != 1 {
			t.Errorf("%s: the alert is not logged:\n%s", u, logs)
		}
		if strings.Contains(logs.String(), "T0KEN") {
			t.Errorf("%s: logs reveal the URL's path:\n%s", u, logs)
		}
	}
}

func TestUnencodableFieldsAreSentAsText(t *testing.T) {
	bodies := make(chan []byte, 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var b bytes.Buffer
		_, _ = b.ReadFrom(r.Body)
		bodies <- b.Bytes()
	}))
	t.Cleanup(srv.Close)
	n, _ := newNotifier(t, Options{WebhookURL: srv.URL})
	n.Notify(Alert{Kind: "k", Message: "m", Fields: map[string]any{"ok": 1, "ch": make(chan int), "fn": func() {}}})
	var got struct{ Fields map[string]any }
	if err := json.Unmarshal(recv(t, bodies, "the alert"), &got); err != nil {
		t.Fatal(err)
	}
	if got.Fields["ok"] != 1.0 || !strings.HasPrefix(fmt.Sprint(got.Fields["ch"]), "0x") || got.Fields["fn"] == nil {
		t.Errorf("fields = %v; want ok=1 and the others as text", got.Fields)
	}
}

func TestBackoff(t *testing.T) {
	n := &Notifier{base: 200 * time.Millisecond, max: 2 * time.Second}
	want := []time.Duration{200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond, 1600 * time.Millisecond, 2 * time.Second, 2 * time.Second}
	for i, w := range want {
		if got := n.backoff(i); got != w {
			t.Errorf("backoff(%d) = %v, want %v", i, got, w)
		}
	}
	if got := n.backoff(1000); got != 2*time.Second {
		t.Errorf("backoff(1000) = %v, want the cap", got)
	}
}

func TestRedactURL(t *testing.T) {
	cases := map[string]string{
		"https://hooks.example":                   "https://hooks.example",
		"https://hooks.example/":                  "https://hooks.example",
		"https://hooks.example:8443/services/abc": "https://hooks.example:8443/…",
		"https://u:p@hooks.example":               "https://hooks.example",
		"http://hooks.example?token=abc":          "http://hooks.example/…",
		"http://[::1":                             "(unparsable URL)",
	}
	for in, want := range cases {
		if got := redactURL(in); got != want {
			t.Errorf("redactURL(%q) = %q, want %q", in, got, want)
		}
	}
}
