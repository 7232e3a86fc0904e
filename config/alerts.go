package config

import (
	"errors"
	"fmt"
	"net/url"
)

// Alerts is the alerts section of the agent configuration. Every alert is logged; with a
// webhook URL it is also POSTed there as JSON (see package alert).
type Alerts struct {
	// WebhookURL is an http or https URL to POST alerts to; empty means log only. It may embed
	// a token, so String and error messages show only its scheme and host.
	WebhookURL string `yaml:"webhook_url"`
	// WebhookTimeout bounds each delivery attempt (default 5s).
	WebhookTimeout Duration `yaml:"webhook_timeout"`
	// WebhookRetries is how many times a failed delivery is retried, 0-10 (default 3).
	WebhookRetries int `yaml:"webhook_retries"`
}

// String describes a with the webhook URL reduced to its scheme and host.
func (a Alerts) String() string {
	return fmt.Sprintf("alerts{webhook_url: %s, webhook_timeout: %v, webhook_retries: %d}",
		orNone(redactURL(a.WebhookURL)), a.WebhookTimeout.Duration, a.WebhookRetries)
}

// GoString is String, so that %#v does not print the webhook URL's path or query either.
func (a Alerts) GoString() string { return "config." + a.String() }

// redactURL returns raw reduced to scheme://host[:port], followed by "/…" when raw had a path,
// query or fragment, which is where webhook tokens live; user information is dropped. A URL
// that does not parse becomes "(unparsable URL)".
func redactURL(raw string) string {
	if raw == "" {
		return ""
	}
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

// checkWebhookURL checks that raw is an absolute http or https URL with a host. Its messages
// show the URL redacted.
func checkWebhookURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // url.Error repeats the whole URL
		}
		return fmt.Errorf("does not parse as a URL (%v); write it like https://hooks.example/regent", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		if u.Scheme == "" {
			return fmt.Errorf("has no scheme; write it like https://hooks.example/regent")
		}
		return fmt.Errorf("scheme %q is not http or https", u.Scheme)
	}
	if u.Hostname() == "" {
		return fmt.Errorf("%s has no host; write it like https://hooks.example/regent", redactURL(raw))
	}
	return nil
}
