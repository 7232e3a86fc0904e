// Package alert delivers operator alerts without ever stalling the caller.
//
// Notify logs every alert at once, as one structured slog line. When a webhook is configured it
// also puts the alert, already encoded as JSON, on a bounded in-memory queue and returns; a
// single background worker POSTs queued alerts one by one, with a timeout per attempt and
// exponential backoff between retries. A slow or dead receiver therefore costs queue space, not
// the caller's time: the caller is typically the leader loop in the middle of a failover. When
// the queue is full the oldest alert is dropped (the newest say most about the present), counted,
// and reported in the log at most once a minute.
//
// Webhook URLs often carry a token in their path or query, so the package logs them reduced to
// scheme and host, and strips the URL from HTTP errors before logging them (DESIGN.md,
// invariant 7). Alerts themselves must not carry secrets: they are logged as given.
package alert

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Severities for Alert.Severity. Receivers may see others; these are the ones regent uses.
const (
	SeverityInfo     = "info"
	SeverityWarning  = "warning"
	SeverityCritical = "critical"
)

// Alert is one event worth an operator's attention. It is sent to the webhook as a JSON object
// with the keys kind, severity, cluster, message, at (RFC 3339 with nanoseconds), labels and
// fields; labels and fields are left out when empty.
type Alert struct {
	// Kind is a short stable identifier receivers can route on, such as "failover_started".
	Kind string `json:"kind"`
	// Severity is one of the Severity constants.
	Severity string `json:"severity"`
	// Cluster names the PostgreSQL cluster concerned; empty for alerts about regent itself.
	Cluster string `json:"cluster"`
	// Message is one human-readable sentence.
	Message string `json:"message"`
	// At is when the event happened; Notify stamps the current time when it is zero.
	At time.Time `json:"at"`
	// Labels are short strings to group and route by (region, node, …); they are also logged.
	Labels map[string]string `json:"labels,omitempty"`
	// Fields carry details for the receiver (LSNs, lag, event id…); values must be encodable
	// as JSON, and are sent as their %v text otherwise. They are not logged.
	Fields map[string]any `json:"fields,omitempty"`
}

// Defaults for Options fields left zero.
const (
	DefaultTimeout     = 5 * time.Second
	DefaultQueueSize   = 256
	DefaultBackoffBase = 200 * time.Millisecond
	DefaultBackoffMax  = 10 * time.Second
	// dropLogInterval is the least time between two log lines about dropped alerts.
	dropLogInterval = time.Minute
	// maxResponseBody is how much of a receiver's answer is read (and discarded) so that the
	// connection can be reused.
	maxResponseBody = 64 << 10
)

// Options configure a Notifier. The zero value logs alerts and sends them nowhere else.
type Options struct {
	// WebhookURL is an http or https URL to POST alerts to; empty means log only. An invalid
	// URL is reported in the log by New and also means log only.
	WebhookURL string
	// Timeout bounds each delivery attempt, from connecting to reading the answer
	// (default DefaultTimeout).
	Timeout time.Duration
	// Retries is how many times a failed delivery is retried after the first attempt;
	// 0 means a single attempt. Negative values count as 0.
	Retries int
	// QueueSize is how many alerts may wait for delivery (default DefaultQueueSize).
	QueueSize int
	// Logger receives the alert lines and delivery problems (default slog.Default()).
	Logger *slog.Logger
	// HTTPClient sends the webhook requests (default: a client on http.DefaultTransport). It
	// must honour request contexts, as every net/http transport does; its own Timeout, if any,
	// applies on top of Timeout.
	HTTPClient *http.Client
	// BackoffBase is the wait before the first retry; each further retry waits twice as long
	// as the one before, up to BackoffMax (defaults DefaultBackoffBase and DefaultBackoffMax).
	// A receiver's Retry-After (in seconds) lengthens a wait, still up to BackoffMax.
	BackoffBase time.Duration
	// BackoffMax caps the wait between two attempts.
	BackoffMax time.Duration
}

// Notifier logs alerts and delivers them to a webhook in the background. Its methods are safe
// for concurrent use. Create one with New and stop it with Close.
type Notifier struct {
	log      *slog.Logger
	url      string // "" when alerts are only logged
	redacted string // url reduced to scheme and host, for logs
	client   *http.Client
	timeout  time.Duration
	retries  int
	base     time.Duration
	max      time.Duration
	now      func() time.Time // replaced by tests

	mu          sync.Mutex
	queue       []item // ring buffer of len QueueSize
	head, count int
	closed      bool
	lastDropLog time.Time
	unlogged    uint64 // drops not yet reported in the log

	wake   chan struct{} // capacity 1: "the queue may have work, or Close was called"
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{} // closed when the worker has exited

	sent, failed, dropped atomic.Uint64
	aborted               atomic.Uint64 // in-flight deliveries cut short by Close
}

// item is a queued alert: its encoded body plus what the worker logs about it.
type item struct {
	kind, cluster string
	body          []byte
}

// New returns a Notifier configured by opts. With a webhook it starts the delivery worker,
// which runs until Close.
func New(opts Options) *Notifier {
	n := &Notifier{
		log:     opts.Logger,
		client:  opts.HTTPClient,
		timeout: opts.Timeout,
		retries: max(opts.Retries, 0),
		base:    opts.BackoffBase,
		max:     opts.BackoffMax,
		now:     time.Now,
		wake:    make(chan struct{}, 1),
		done:    make(chan struct{}),
	}
	if n.log == nil {
		n.log = slog.Default()
	}
	if n.client == nil {
		n.client = &http.Client{}
	}
	if n.timeout <= 0 {
		n.timeout = DefaultTimeout
	}
	if n.base <= 0 {
		n.base = DefaultBackoffBase
	}
	if n.max <= 0 {
		n.max = DefaultBackoffMax
	}
	n.base = min(n.base, n.max)
	size := opts.QueueSize
	if size <= 0 {
		size = DefaultQueueSize
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())

	if opts.WebhookURL != "" {
		if err := checkURL(opts.WebhookURL); err != nil {
			n.log.Error("alert webhook disabled: alerts are only logged; fix alerts.webhook_url",
				slog.String("webhook", redactURL(opts.WebhookURL)), slog.String("error", err.Error()))
		} else {
			n.url = opts.WebhookURL
			n.redacted = redactURL(opts.WebhookURL)
		}
	}
	if n.url == "" {
		close(n.done)
		return n
	}
	n.queue = make([]item, size)
	go n.run()
	return n
}

// Notify logs a at warn level and, when a webhook is configured, queues it for delivery. It
// never waits for the network: when the queue is full the oldest queued alert is dropped to make
// room. After Close, alerts are still logged but no longer queued (they count as dropped).
// Notify encodes a before returning, so the caller may reuse a's maps afterwards.
func (n *Notifier) Notify(a Alert) {
	if a.At.IsZero() {
		a.At = n.now()
	}
	attrs := []slog.Attr{
		slog.String("kind", a.Kind),
		slog.String("severity", a.Severity),
		slog.String("cluster", a.Cluster),
		slog.String("message", a.Message),
	}
	if len(a.Labels) > 0 {
		labels := make([]any, 0, len(a.Labels))
		for _, k := range slices.Sorted(maps.Keys(a.Labels)) {
			labels = append(labels, slog.String(k, a.Labels[k]))
		}
		attrs = append(attrs, slog.Group("labels", labels...))
	}
	n.log.LogAttrs(context.Background(), slog.LevelWarn, "alert", attrs...)
	if n.url == "" {
		return
	}
	body, err := encode(a)
	if err != nil {
		n.log.Error("alert not sent to webhook: cannot encode it as JSON",
			slog.String("kind", a.Kind), slog.String("cluster", a.Cluster), slog.String("error", err.Error()))
		n.failed.Add(1)
		return
	}
	n.enqueue(item{kind: a.Kind, cluster: a.Cluster, body: body})
}

// encode marshals a; fields that JSON cannot represent (channels, functions, NaN…) are sent as
// their %v text rather than losing the whole alert.
func encode(a Alert) ([]byte, error) {
	body, err := json.Marshal(a)
	if err == nil {
		return body, nil
	}
	fields := make(map[string]any, len(a.Fields))
	for k, v := range a.Fields {
		if _, err := json.Marshal(v); err != nil {
			v = fmt.Sprintf("%v", v)
		}
		fields[k] = v
	}
	a.Fields = fields
	return json.Marshal(a)
}

func (n *Notifier) enqueue(it item) {
	n.mu.Lock()
	var dropped bool
	if n.closed {
		dropped = true
	} else {
		if n.count == len(n.queue) {
			n.queue[n.head] = item{}
			n.head = (n.head + 1) % len(n.queue)
			n.count--
			dropped = true
		}
		n.queue[(n.head+n.count)%len(n.queue)] = it
		n.count++
	}
	var report uint64
	if dropped {
		n.dropped.Add(1)
		n.unlogged++
		if now := n.now(); n.lastDropLog.IsZero() || now.Sub(n.lastDropLog) >= dropLogInterval {
			n.lastDropLog = now
			report, n.unlogged = n.unlogged, 0
		}
	}
	closed := n.closed
	n.mu.Unlock()

	select {
	case n.wake <- struct{}{}:
	default: // the worker already has a wake-up pending
	}
	if report > 0 {
		reason := "queue full: the webhook is slower than alerts arrive; dropped the oldest"
		if closed {
			reason = "notifier closed"
		}
		n.log.Warn("alerts dropped", slog.String("reason", reason), slog.Uint64("dropped", report),
			slog.Uint64("dropped_total", n.dropped.Load()), slog.Int("queue_size", len(n.queue)),
			slog.String("webhook", n.redacted))
	}
}

// Stats returns how many alerts were delivered to the webhook, how many failed (permanently
// refused, out of retries, unencodable, or cut short by Close), and how many were dropped without
// an attempt (queue overflow, or queued when Close gave up, or notified after Close). Alerts
// that are only logged count in none of them.
func (n *Notifier) Stats() (sent, failed, dropped uint64) {
	return n.sent.Load(), n.failed.Load(), n.dropped.Load()
}

// Close stops accepting alerts for delivery and waits while the worker delivers what is queued.
// When ctx ends first it aborts the delivery in flight, drops what is left, and returns an error
// wrapping ctx.Err() that says how many alerts were lost; otherwise it returns nil. Close may be
// called more than once.
func (n *Notifier) Close(ctx context.Context) error {
	n.mu.Lock()
	n.closed = true
	n.mu.Unlock()
	select {
	case n.wake <- struct{}{}:
	default:
	}
	select {
	case <-n.done:
		n.cancel()
		return nil
	case <-ctx.Done():
	}
	n.cancel()
	<-n.done // prompt: the worker's waits and requests all end with n.ctx

	n.mu.Lock()
	left := n.count
	clear(n.queue)
	n.head, n.count = 0, 0
	n.mu.Unlock()
	n.dropped.Add(uint64(left))
	aborted := n.aborted.Swap(0)
	if left == 0 && aborted == 0 {
		return nil
	}
	n.log.Warn("alert notifier closed before delivering everything",
		slog.Uint64("in_flight_aborted", aborted), slog.Int("dropped", left), slog.String("webhook", n.redacted))
	return fmt.Errorf("alert: close: gave up with %d alert(s) undelivered (%d in flight, %d queued); a longer shutdown timeout lets the webhook catch up: %w",
		uint64(left)+aborted, aborted, left, context.Cause(ctx))
}

// run is the delivery worker: it takes alerts off the queue in order and delivers each one.
func (n *Notifier) run() {
	defer close(n.done)
	for {
		n.mu.Lock()
		if n.count == 0 {
			closed := n.closed
			n.mu.Unlock()
			if closed {
				return
			}
			select {
			case <-n.wake:
				continue
			case <-n.ctx.Done():
				return
			}
		}
		it := n.queue[n.head]
		n.queue[n.head] = item{}
		n.head = (n.head + 1) % len(n.queue)
		n.count--
		n.mu.Unlock()

		n.deliver(it)
		if n.ctx.Err() != nil {
			return
		}
	}
}

// deliver POSTs one alert, retrying transient failures with backoff.
func (n *Notifier) deliver(it item) {
	var lastErr error
	attempts := 0
	for attempt := 0; attempt <= n.retries; attempt++ {
		if attempt > 0 {
			if !n.sleep(max(retryAfterOf(lastErr), n.backoff(attempt-1))) {
				n.abort(it, attempts, lastErr)
				return
			}
		}
		attempts++
		err := n.post(it.body)
		if err == nil {
			if attempt > 0 {
				n.log.Info("alert delivered to webhook after retrying", slog.String("kind", it.kind),
					slog.String("cluster", it.cluster), slog.Int("attempts", attempts), slog.String("webhook", n.redacted))
			}
			n.sent.Add(1) // after logging, so that a reader of Stats also finds the log line
			return
		}
		lastErr = err
		if n.ctx.Err() != nil {
			n.abort(it, attempts, lastErr)
			return
		}
		var se *statusError
		if errors.As(err, &se) && !se.transient() {
			break
		}
		n.log.Debug("alert webhook attempt failed", slog.String("kind", it.kind), slog.Int("attempt", attempts),
			slog.String("webhook", n.redacted), slog.String("error", err.Error()))
	}
	n.log.Error("alert not delivered to webhook", slog.String("kind", it.kind), slog.String("cluster", it.cluster),
		slog.Int("attempts", attempts), slog.String("webhook", n.redacted), slog.String("error", lastErr.Error()))
	n.failed.Add(1)
}

// abort records a delivery cut short because Close gave up waiting.
func (n *Notifier) abort(it item, attempts int, lastErr error) {
	attrs := []slog.Attr{slog.String("kind", it.kind), slog.String("cluster", it.cluster),
		slog.Int("attempts", attempts), slog.String("webhook", n.redacted)}
	if lastErr != nil {
		attrs = append(attrs, slog.String("error", lastErr.Error()))
	}
	n.log.LogAttrs(context.Background(), slog.LevelError, "alert delivery abandoned: notifier closed", attrs...)
	n.failed.Add(1)
	n.aborted.Add(1)
}

// backoff is the wait before retry number retry (0 for the first): base·2^retry, capped.
func (n *Notifier) backoff(retry int) time.Duration {
	d := n.base
	for range retry {
		if d >= n.max/2 {
			return n.max
		}
		d *= 2
	}
	return min(d, n.max)
}

// sleep waits d, or returns false at once when the notifier is being shut down.
func (n *Notifier) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-n.ctx.Done():
		return false
	}
}

// post makes one delivery attempt. It returns nil for a 2xx answer, a *statusError for any
// other answer, and a transport error (without the URL) when there was no answer.
func (n *Notifier) post(body []byte) error {
	ctx, cancel := context.WithTimeout(n.ctx, n.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.url, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("build request: %w", stripURL(err))
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "regent-alert/1")
	resp, err := n.client.Do(req)
	if err != nil {
		err = stripURL(err)
		if errors.Is(err, context.DeadlineExceeded) && n.ctx.Err() == nil {
			return fmt.Errorf("no answer within %v (alerts.webhook_timeout): %w", n.timeout, err)
		}
		return fmt.Errorf("post: %w", err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxResponseBody))
	resp.Body.Close()
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return nil
	}
	se := &statusError{code: resp.StatusCode}
	if s := resp.Header.Get("Retry-After"); s != "" {
		if secs, err := strconv.Atoi(s); err == nil && secs > 0 {
			se.retryAfter = min(time.Duration(secs)*time.Second, n.max)
		}
	}
	return se
}

// statusError is a webhook's answer other than 2xx.
type statusError struct {
	code       int
	retryAfter time.Duration
}

func (e *statusError) Error() string {
	if e.transient() {
		return fmt.Sprintf("webhook answered %d %s", e.code, http.StatusText(e.code))
	}
	return fmt.Sprintf("webhook answered %d %s, which will not change on retry; check the webhook URL and the receiver's logs", e.code, http.StatusText(e.code))
}

// transient reports whether a retry may succeed: server errors, 408 Request Timeout and 429
// Too Many Requests. Other answers (4xx, and 1xx/3xx that were not followed) are permanent.
func (e *statusError) transient() bool {
	return e.code >= 500 || e.code == http.StatusRequestTimeout || e.code == http.StatusTooManyRequests
}

func retryAfterOf(err error) time.Duration {
	var se *statusError
	if errors.As(err, &se) {
		return se.retryAfter
	}
	return 0
}

// stripURL removes the *url.Error layer net/http wraps around request errors: it quotes the
// whole URL, token included.
func stripURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// checkURL accepts absolute http and https URLs with a host.
func checkURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("does not parse as a URL: %w", stripURL(err))
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("scheme %q is not http or https", u.Scheme)
	}
	if u.Hostname() == "" {
		return errors.New("the URL has no host")
	}
	return nil
}

// redactURL reduces raw to scheme://host[:port], adding "/…" when there was more: webhook tokens
// live in the path, query or user information.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	s := u.Scheme + "://" + u.Host
	if u.Opaque != "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		s += "/…"
	}
	return s
}
