package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/regentdb/regent/keeper"
	"github.com/regentdb/regent/logging"
)

// runKeeper is `regent keeper --config FILE`: the agent beside one PostgreSQL server. It runs
// until ctx ends (SIGINT, SIGTERM), then shuts the keeper down.
func runKeeper(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("keeper", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "keeper configuration file (YAML)")
	format := fs.String("log-format", "", "override log.format: text or json")
	level := fs.String("log-level", "", "override log.level: debug, info, warn or error")
	check := fs.Bool("check", false, "validate the configuration, print it and exit")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *path == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "usage: regent keeper --config FILE [--log-format text|json] [--log-level LEVEL] [--check]")
		return 2
	}
	cfg, err := keeper.LoadConfig(*path)
	if err != nil {
		fmt.Fprintf(stderr, "regent keeper: %v\n", err)
		return 1
	}
	if *check {
		fmt.Fprintf(stdout, "%s: valid; keeper for %s/%s, data_dir %s, %d witnesses, lease_ttl %v\n",
			*path, cfg.Cluster, cfg.NodeName, cfg.DataDir, len(cfg.Witnesses), cfg.LeaseTTL.Duration)
		return 0
	}
	if *format != "" {
		cfg.Log.Format = *format
	}
	if *level != "" {
		cfg.Log.Level = *level
	}
	logger, err := logging.New(stderr, cfg.Log.Format, cfg.Log.Level)
	if err != nil {
		fmt.Fprintf(stderr, "regent keeper: %v\n", err)
		return 2
	}
	k, err := keeper.Start(*cfg, logger)
	if err != nil {
		fmt.Fprintf(stderr, "regent keeper: %v\n", err)
		return 1
	}
	<-ctx.Done()
	if err := k.Shutdown(); err != nil {
		fmt.Fprintf(stderr, "regent keeper: shutdown: %v\n", err)
		return 1
	}
	return 0
}
