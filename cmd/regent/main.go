// Command regent is the failover coordinator's single binary: `regent agent` runs a witness,
// `regent lab` a local deployment, and the other subcommands are the operator's gRPC client.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/regentdb/regent/agent"
	"github.com/regentdb/regent/cli"
	"github.com/regentdb/regent/config"
	"github.com/regentdb/regent/lab"
	"github.com/regentdb/regent/logging"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch cli.Subcommand(args) {
	case "agent":
		return runAgent(ctx, args[1:], stderr)
	case "lab":
		return runLab(ctx, args[1:], stdout, stderr)
	case "", "help", "-h", "--help":
		if len(args) <= 1 {
			usage(stdout)
			return 0
		}
	}
	return cli.Run(ctx, args, stdout, stderr)
}

func usage(w io.Writer) {
	fmt.Fprint(w, `regent keeps a PostgreSQL database writable when a region fails.

Daemons:
  agent --config FILE        run a witness (Raft voter, gossip, gRPC API, /metrics)
  lab [--dir DIR]            run a local deployment of three witnesses on loopback

`)
	cli.Usage(w)
}

func runAgent(ctx context.Context, args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "agent configuration file (YAML)")
	format := fs.String("log-format", "", "override log.format: text or json")
	level := fs.String("log-level", "", "override log.level: debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *path == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "usage: regent agent --config FILE [--log-format text|json] [--log-level LEVEL]")
		return 2
	}
	cfg, err := config.Load(*path)
	if err != nil {
		fmt.Fprintf(stderr, "regent agent: %v\n", err)
		return 1
	}
	if *format != "" {
		cfg.Log.Format = *format
	}
	if *level != "" {
		cfg.Log.Level = *level
	}
	logger, err := logging.New(stderr, cfg.Log.Format, cfg.Log.Level)
	if err != nil {
		fmt.Fprintf(stderr, "regent agent: %v\n", err)
		return 2
	}
	a, err := agent.Start(*cfg, logger)
	if err != nil {
		fmt.Fprintf(stderr, "regent agent: %v\n", err)
		return 1
	}
	<-ctx.Done()
	if err := a.Shutdown(); err != nil {
		fmt.Fprintf(stderr, "regent agent: shutdown: %v\n", err)
		return 1
	}
	return 0
}

func runLab(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("lab", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "", "keep the lab's data here (default: a temporary directory removed on exit)")
	witnesses := fs.Int("witnesses", 3, "number of witnesses: 3 or 5")
	logLevel := fs.String("log-level", "warn", "witness log level shown on stderr")
	refresh := fs.Duration("refresh", time.Second, "how often the status is checked (the table is reprinted when it changes)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	logger, err := logging.New(stderr, "text", *logLevel)
	if err != nil {
		fmt.Fprintf(stderr, "regent lab: %v\n", err)
		return 2
	}
	l, err := lab.Start(lab.Options{Dir: *dir, Witnesses: *witnesses, Logger: logger})
	if err != nil {
		fmt.Fprintf(stderr, "regent lab: %v\n", err)
		return 1
	}
	defer l.Stop()
	if err := l.WriteExampleSpec(); err != nil {
		fmt.Fprintf(stderr, "regent lab: %v\n", err)
	}
	l.Describe(stdout)
	readyCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = l.WaitReady(readyCtx)
	cancel()
	if err != nil && !errors.Is(ctx.Err(), context.Canceled) {
		fmt.Fprintf(stderr, "regent lab: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, "Ctrl-C stops the lab.")
	addr := l.Configs[0].GRPCAddr
	last := ""
	for {
		// Reprint the status table only when it changed, so the screen stays readable.
		var out bytes.Buffer
		cli.Run(ctx, []string{"--addr", addr, "status"}, &out, &out)
		if out.String() != last && ctx.Err() == nil {
			fmt.Fprintf(stdout, "\n── %s ──\n%s", time.Now().Format(time.TimeOnly), out.String())
			last = out.String()
		}
		select {
		case <-ctx.Done():
			fmt.Fprintln(stdout, "\nstopping the lab…")
			return 0
		case <-time.After(*refresh):
		}
	}
}
