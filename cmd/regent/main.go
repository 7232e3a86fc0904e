// Command regent is the failover coordinator's single binary: `regent agent` runs a witness,
// `regent lab` a local deployment, and the other subcommands are the operator's gRPC client.
package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/regentdb/regent/agent"
	"github.com/regentdb/regent/cli"
	"github.com/regentdb/regent/config"
	"github.com/regentdb/regent/fsm"
	"github.com/regentdb/regent/lab"
	"github.com/regentdb/regent/logging"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
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
	case "keeper":
		return runKeeper(ctx, args[1:], stdout, stderr)
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
  keeper --config FILE       run the keeper beside one PostgreSQL server (quorum lease, local
                             fencing, fencing-token instructions, HAProxy health endpoints)
  lab [--dir DIR] [--no-postgres] [--kill-primary]
                             run a local deployment on loopback: three witnesses, a PostgreSQL
                             primary and two standbys in three regions, named when installed;
                             k + Enter kills the primary to watch a failover

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

// labStdin is where `regent lab` reads its key presses (k, q); tests replace it.
var labStdin io.Reader = os.Stdin

func runLab(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("lab", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "", "keep the witnesses' data here across runs (default: a temporary directory removed on exit); PostgreSQL and named are fresh on every run")
	witnesses := fs.Int("witnesses", 3, "number of witnesses: 3 or 5")
	noPostgres := fs.Bool("no-postgres", false, "start the witnesses only: no PostgreSQL, no named, no cluster")
	killPrimary := fs.Bool("kill-primary", false, "once the cluster is healthy, kill the primary (its host: keeper and postmaster) and watch the failover")
	noKeepers := fs.Bool("no-keepers", false, "run PostgreSQL without a keeper beside each server (no lease, no rejoin; k then kills the postmaster alone)")
	logLevel := fs.String("log-level", "warn", "witness log level shown on stderr")
	refresh := fs.Duration("refresh", time.Second, "how often the status is checked (the table is reprinted when it changes)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintln(stderr, "usage: regent lab [--dir DIR] [--witnesses 3|5] [--no-postgres] [--no-keepers] [--kill-primary] [--log-level LEVEL] [--refresh DURATION]")
		return 2
	}
	if *noPostgres && *killPrimary {
		fmt.Fprintln(stderr, "regent lab: --kill-primary needs PostgreSQL; drop --no-postgres")
		return 2
	}
	logger, err := logging.New(stderr, "text", *logLevel)
	if err != nil {
		fmt.Fprintf(stderr, "regent lab: %v\n", err)
		return 2
	}
	fmt.Fprintln(stdout, "regent lab: starting (Ctrl-C stops it)")
	l, err := lab.Start(ctx, lab.Options{Dir: *dir, Witnesses: *witnesses, NoPostgres: *noPostgres, Keepers: !*noKeepers && !*noPostgres, Logger: logger,
		Progress: &linePrefixer{w: stdout, prefix: "regent lab: "}})
	if err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(stdout, "regent lab: stopped before it was ready")
			return 0
		}
		fmt.Fprintf(stderr, "regent lab: %v\n", err)
		return 1
	}
	defer func() {
		fmt.Fprintln(stdout, "\nstopping the lab…")
		if err := l.Stop(); err != nil {
			fmt.Fprintf(stderr, "regent lab: stop: %v\n", err)
		}
	}()
	if err := l.WriteExampleSpec(); err != nil {
		fmt.Fprintf(stderr, "regent lab: %v\n", err)
	}
	fmt.Fprintln(stdout)
	l.Describe(stdout)
	if *noPostgres {
		readyCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err = l.WaitReady(readyCtx)
		cancel()
		if err != nil && ctx.Err() == nil {
			fmt.Fprintf(stderr, "regent lab: %v\n", err)
			return 1
		}
		fmt.Fprintln(stdout, "Ctrl-C (or q + Enter) stops the lab.")
	} else {
		fmt.Fprintf(stdout, "Cluster %s is healthy. Type %s, q + Enter to quit; Ctrl-C stops the lab too.\n", lab.ClusterName, labKeys(*noKeepers))
	}

	// Key presses arrive as lines; at the end of input (no terminal, CI) the lab keeps running.
	keys := make(chan string)
	go func() {
		sc := bufio.NewScanner(labStdin)
		for sc.Scan() {
			select {
			case keys <- strings.ToLower(strings.TrimSpace(sc.Text())):
			case <-ctx.Done():
				return
			}
		}
		close(keys)
	}()
	failovers := make(chan string, 4)
	kill := func() {
		after := l.LastEventID()
		k, err := l.KillPrimary()
		if err != nil {
			fmt.Fprintf(stdout, "\nregent lab: %v\n", err)
			return
		}
		what := fmt.Sprintf("SIGKILL to postmaster pid %d", k.PID)
		if k.Host {
			what = fmt.Sprintf("its whole host lost: keeper gone and SIGKILL to postmaster pid %d; r + Enter brings the host back", k.PID)
		}
		fmt.Fprintf(stdout, "\n── %s ── killed primary %s (%s, %s:%d): %s. The witnesses notice within down_after and fail over; watch the table.\n",
			k.At.Format("15:04:05.000"), k.Node.Name, k.Node.Region, k.Node.Server.Host, k.Node.Server.Port, what)
		go func() {
			wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
			defer cancel()
			ev, err := l.WaitFailover(wctx, after)
			if err != nil {
				if ctx.Err() == nil {
					failovers <- fmt.Sprintf("no failover finished within 2 minutes: %v (see regent events)", err)
				}
				return
			}
			failovers <- describeFailover(ev, k.At)
		}()
	}
	revive := func() {
		down := l.Down()
		if len(down) == 0 {
			fmt.Fprintln(stdout, "regent lab: no host is down (k loses the primary's host first)")
			return
		}
		for _, name := range down {
			if err := l.Revive(name); err != nil {
				fmt.Fprintf(stdout, "\nregent lab: %v\n", err)
				continue
			}
			fmt.Fprintf(stdout, "\n── %s ── the host of %s is back: its keeper keeps it from writing and the leader has it rejoin as a standby.\n",
				time.Now().Format("15:04:05.000"), name)
			go func() {
				wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
				defer cancel()
				msg, err := l.WaitRejoin(wctx, name)
				if err != nil {
					if ctx.Err() == nil {
						failovers <- fmt.Sprintf("%s has not rejoined within 3 minutes: %v (see regent rejoin --cluster %s)", name, err, lab.ClusterName)
					}
					return
				}
				failovers <- msg
			}()
		}
	}
	if *killPrimary {
		kill()
	}
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
			return 0
		case msg := <-failovers:
			fmt.Fprintf(stdout, "\n── %s ── %s\n", time.Now().Format(time.TimeOnly), msg)
		case key, ok := <-keys:
			switch {
			case !ok:
				keys = nil // end of input: keep running until Ctrl-C
			case key == "q":
				return 0
			case key == "k" && !*noPostgres:
				kill()
			case key == "k":
				fmt.Fprintln(stdout, "regent lab: no PostgreSQL in this lab (--no-postgres): nothing to kill")
			case key == "r" && !*noPostgres:
				revive()
			case key != "":
				fmt.Fprintf(stdout, "regent lab: type %s, q + Enter to quit\n", labKeys(*noKeepers))
			}
		case <-time.After(*refresh):
		}
	}
}

// labKeys says which keys the full lab takes.
func labKeys(noKeepers bool) string {
	if noKeepers {
		return "k + Enter to kill the primary (kill -9 of its postmaster)"
	}
	return "k + Enter to lose the primary's host (its keeper and postmaster), r + Enter to bring it back"
}

// describeFailover summarises a finished failover with its steps' times after the kill.
func describeFailover(ev *regentv1.FailoverEvent, killed time.Time) string {
	if ev.GetStep() != regentv1.FailoverStep_FAILOVER_STEP_COMPLETED {
		return fmt.Sprintf("failover %d aborted: %s (see regent events)", ev.GetId(), ev.GetAbortReason())
	}
	var b strings.Builder
	fmt.Fprintf(&b, "failover %d completed: %s (%s) → %s (%s); after the kill:", ev.GetId(), ev.GetFromNode(), ev.GetFromRegion(), ev.GetToNode(), ev.GetToRegion())
	fmt.Fprintf(&b, " decided %+.1fs", ev.GetStartedAt().AsTime().Sub(killed).Seconds())
	for _, st := range ev.GetSteps() {
		if name := fsm.StepName(st.GetStep()); name != "decided" {
			fmt.Fprintf(&b, ", %s %+.1fs", name, st.GetAt().AsTime().Sub(killed).Seconds())
		}
	}
	fmt.Fprintf(&b, " (fence: %s)", ev.GetFenceMethod())
	if ev.GetPublishError() != "" {
		fmt.Fprintf(&b, "; DNS not published: %s", ev.GetPublishError())
	}
	return b.String()
}

// linePrefixer writes each line with a prefix.
type linePrefixer struct {
	w      io.Writer
	prefix string
}

func (p *linePrefixer) Write(b []byte) (int, error) {
	for _, line := range strings.SplitAfter(string(b), "\n") {
		if line == "" {
			continue
		}
		if _, err := io.WriteString(p.w, p.prefix+line); err != nil {
			return 0, err
		}
	}
	return len(b), nil
}
