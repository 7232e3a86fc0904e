package logging

import (
	"context"
	"io"
	"log"
	"log/slog"

	"github.com/hashicorp/go-hclog"
)

// hcLogger implements hclog.Logger on top of slog, for hashicorp/raft.
type hcLogger struct {
	logger *slog.Logger
	name   string
	args   []any
}

// NewHCLog adapts logger into the hclog.Logger that hashicorp/raft expects. Raft's key/value
// pairs become slog attributes; hclog's trace level maps to debug.
func NewHCLog(logger *slog.Logger, name string) hclog.Logger {
	return &hcLogger{logger: logger, name: name}
}

func toSlog(level hclog.Level) slog.Level {
	switch level {
	case hclog.Trace, hclog.Debug:
		return slog.LevelDebug
	case hclog.Warn:
		return slog.LevelWarn
	case hclog.Error:
		return slog.LevelError
	default:
		return slog.LevelInfo
	}
}

func (l *hcLogger) Log(level hclog.Level, msg string, args ...interface{}) {
	if level == hclog.Off {
		return
	}
	attrs := make([]any, 0, len(args)+len(l.args)+2)
	if l.name != "" {
		attrs = append(attrs, "component", l.name)
	}
	attrs = append(attrs, l.args...)
	attrs = append(attrs, args...)
	l.logger.Log(context.Background(), toSlog(level), msg, attrs...)
}

func (l *hcLogger) Trace(msg string, args ...interface{}) { l.Log(hclog.Trace, msg, args...) }
func (l *hcLogger) Debug(msg string, args ...interface{}) { l.Log(hclog.Debug, msg, args...) }
func (l *hcLogger) Info(msg string, args ...interface{})  { l.Log(hclog.Info, msg, args...) }
func (l *hcLogger) Warn(msg string, args ...interface{})  { l.Log(hclog.Warn, msg, args...) }
func (l *hcLogger) Error(msg string, args ...interface{}) { l.Log(hclog.Error, msg, args...) }

func (l *hcLogger) enabled(level hclog.Level) bool {
	return l.logger.Enabled(context.Background(), toSlog(level))
}

func (l *hcLogger) IsTrace() bool { return l.enabled(hclog.Trace) }
func (l *hcLogger) IsDebug() bool { return l.enabled(hclog.Debug) }
func (l *hcLogger) IsInfo() bool  { return l.enabled(hclog.Info) }
func (l *hcLogger) IsWarn() bool  { return l.enabled(hclog.Warn) }
func (l *hcLogger) IsError() bool { return l.enabled(hclog.Error) }

func (l *hcLogger) ImpliedArgs() []interface{} { return l.args }

func (l *hcLogger) With(args ...interface{}) hclog.Logger {
	c := *l
	c.args = append(append([]any(nil), l.args...), args...)
	return &c
}

func (l *hcLogger) Name() string { return l.name }

func (l *hcLogger) Named(name string) hclog.Logger {
	c := *l
	if c.name != "" {
		c.name += "." + name
	} else {
		c.name = name
	}
	return &c
}

func (l *hcLogger) ResetNamed(name string) hclog.Logger {
	c := *l
	c.name = name
	return &c
}

// SetLevel is a no-op: the level belongs to the slog handler.
func (l *hcLogger) SetLevel(hclog.Level) {}

func (l *hcLogger) GetLevel() hclog.Level {
	switch {
	case l.IsDebug():
		return hclog.Debug
	case l.IsInfo():
		return hclog.Info
	case l.IsWarn():
		return hclog.Warn
	default:
		return hclog.Error
	}
}

func (l *hcLogger) StandardLogger(*hclog.StandardLoggerOptions) *log.Logger {
	return NewStdLogger(l.logger.With("component", l.name))
}

func (l *hcLogger) StandardWriter(*hclog.StandardLoggerOptions) io.Writer {
	return &levelWriter{logger: l.logger.With("component", l.name)}
}
