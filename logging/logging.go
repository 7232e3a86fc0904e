// Package logging builds regent's structured logger and adapts the loggers of hashicorp/raft
// (hclog) and hashicorp/memberlist (*log.Logger) into it, so every line is one slog record.
package logging

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"strings"
	"sync"
)

// New returns a slog.Logger writing to w in "text" or "json" format at the given level
// ("debug", "info", "warn", "error").
func New(w io.Writer, format, level string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q is not one of debug, info, warn, error: %w", level, err)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch format {
	case "", "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	default:
		return nil, fmt.Errorf("log format %q is not one of text, json", format)
	}
}

// Discard returns a logger that drops everything (for tests and benchmarks).
func Discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// levelWriter turns lines written by a standard *log.Logger into slog records, taking the
// level from a "[DEBUG]"-style prefix as memberlist and older hashicorp code write them.
type levelWriter struct {
	logger *slog.Logger
	mu     sync.Mutex
	buf    bytes.Buffer
}

// NewStdLogger returns a *log.Logger whose lines become records of logger, at the level named
// by a "[LEVEL]" prefix in the line (info when there is none).
func NewStdLogger(logger *slog.Logger) *log.Logger {
	return log.New(&levelWriter{logger: logger}, "", 0)
}

func (w *levelWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	for {
		line, err := w.buf.ReadString('\n')
		if err != nil { // incomplete line: keep it for the next write
			w.buf.Reset()
			w.buf.WriteString(line)
			return len(p), nil
		}
		w.emit(strings.TrimRight(line, "\r\n"))
	}
}

func (w *levelWriter) emit(line string) {
	if line == "" {
		return
	}
	level, msg := parseLevel(line)
	w.logger.Log(context.Background(), level, msg)
}

// parseLevel splits "[WARN] memberlist: text" into a level and the rest.
func parseLevel(line string) (slog.Level, string) {
	line = strings.TrimSpace(line)
	if !strings.HasPrefix(line, "[") {
		return slog.LevelInfo, line
	}
	end := strings.IndexByte(line, ']')
	if end < 0 {
		return slog.LevelInfo, line
	}
	rest := strings.TrimSpace(line[end+1:])
	switch strings.ToUpper(line[1:end]) {
	case "TRACE", "DEBUG":
		return slog.LevelDebug, rest
	case "INFO":
		return slog.LevelInfo, rest
	case "WARN", "WARNING":
		return slog.LevelWarn, rest
	case "ERR", "ERROR":
		return slog.LevelError, rest
	default:
		return slog.LevelInfo, line
	}
}
