// Package cli implements the operator's client commands of the regent binary (status, members,
// cluster, channels, events, watch, failover, switchover, rejoin, pause, resume): it parses their flags, calls a
// witness's gRPC API and prints the answer as a table for people or as protojson for scripts.
//
// Failover commands. `regent failover --cluster C` asks the leader to start a manual failover,
// to the node named by --to or else to the candidate an automatic failover would pick; --force
// skips the lag gate (max_lag_on_failover, failover_lag_threshold) but never the fence. The
// command returns once the failover is decided; the saga then runs on the leader, and
// `regent events --cluster C --watch` follows it step by step. `regent pause` and `regent resume`
// turn a cluster's automatic failover off and on. `regent switchover --cluster C --to NODE`
// starts a planned, zero-loss change of primary (both nodes need keepers); --timeout also
// bounds how long it waits for the target to catch up (default: the policy's
// switchover_timeout; past it the switchover aborts and the old primary takes writes again),
// and --wait follows it to completed or aborted (exit 1) and prints the measured data loss.
// `regent rejoin --cluster C` shows how the old primary of the cluster's latest failover is
// coming back as a standby (status, method, the exact data loss with its fork and final LSNs,
// the lost transactions); --watch follows its catch-up with a progress bar (bytes behind, rate,
// ETA) until it is caught up, or failed (exit 1).
//
// Output. `regent events` prints one block per failover event: the trigger, each committed
// step with its time (the first as a clock time, the others as offsets from it), the fence
// method, the promoted timeline and LSN, the data lost (an estimate until the old primary
// rejoins, then exact), the DNS publish result, the abort reason and the saga's notes. With
// --watch it then follows the Watch stream and prints one line per change of a failover
// event, e.g. "10:00:01.634 event 7 orders fenced (sql)", until interrupted. `regent status`
// shows under each cluster's header whether automatic failover is paused, why the coordinator
// last declined to fail over, and any failover still running.
//
// Clock times are printed in the local time zone (the zone of the clock Run is given).
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/user"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// Exit codes returned by Run.
const (
	// ExitOK means the command succeeded.
	ExitOK = 0
	// ExitError means the server answered with an error, or I/O (dialing, reading a spec
	// file, writing output) failed.
	ExitError = 1
	// ExitUsage means the command line was wrong: unknown command or flag, missing or extra
	// arguments, a bad flag value.
	ExitUsage = 2
)

// DefaultAddr is the agent address used when neither --addr nor $REGENT_ADDR is set.
const DefaultAddr = "127.0.0.1:7103"

// AddrEnv names the environment variable that sets the default for --addr.
const AddrEnv = "REGENT_ADDR"

// DefaultTimeout is the default per-request deadline (--timeout).
const DefaultTimeout = 10 * time.Second

// Command describes one top-level client command, for dispatch and help.
type Command struct {
	// Name is the word that selects the command, e.g. "cluster".
	Name string
	// Usages are its synopsis lines without the leading "regent ", e.g. "cluster apply -f FILE".
	Usages []string
	// Summary is a one-line description.
	Summary string
}

// command is a Command plus its implementation and one help line per usage line.
type command struct {
	Command
	run   func(r *runner, args []string) error
	lines []string
}

// commands is the dispatch table, in the order help lists them.
var commands = []command{
	{Command{"status", []string{"status"},
		"leader, members, clusters with their nodes, channels and recent failovers"},
		(*runner).status, nil},
	{Command{"members", []string{"members", "members remove NAME"},
		"list the witnesses, or remove one from the Raft configuration"},
		(*runner).members, []string{
			"witnesses with their region, Raft role, voter flag and gossip health",
			"remove a witness from the Raft configuration and the member table",
		}},
	{Command{"cluster", []string{"cluster apply -f FILE", "cluster list", "cluster delete NAME"},
		"create or update a cluster from a YAML spec, list clusters, delete one"},
		(*runner).cluster, []string{
			"create or update a cluster from a YAML spec (checked locally first)",
			"clusters with their primary, node count, spec version and paused flag",
			"remove a cluster from regent",
		}},
	{Command{"channels", []string{"channels [--cluster C]"},
		"replication channels with their status and lag"},
		(*runner).channels, nil},
	{Command{"events", []string{"events [--cluster C] [--watch]"},
		"failover events: each step and its time, fence, data lost, DNS; --watch follows them"},
		(*runner).events, nil},
	{Command{"failover", []string{"failover --cluster C [--to NODE] [--force] [--reason TEXT]"},
		"start a manual failover, to NODE or else to the best candidate"},
		(*runner).failover, nil},
	{Command{"switchover", []string{"switchover --cluster C --to NODE [--timeout D] [--wait] [--reason TEXT]"},
		"planned, zero-loss change of primary to a streaming standby; the old one follows it"},
		(*runner).switchover, nil},
	{Command{"rejoin", []string{"rejoin --cluster C [--watch]"},
		"the old primary's return as a standby: status, exact data loss, lost transactions; --watch a progress bar"},
		(*runner).rejoin, nil},
	{Command{"pause", []string{"pause --cluster C [--reason TEXT]"},
		"stop automatic failover of a cluster until resumed"},
		(*runner).pause, nil},
	{Command{"resume", []string{"resume --cluster C"},
		"re-enable automatic failover of a paused cluster"},
		(*runner).resume, nil},
	{Command{"watch", []string{"watch [--from N]"},
		"follow state changes as they are committed (Ctrl-C to stop)"},
		(*runner).watch, nil},
}

// usageWidth is the width of the synopsis column in Usage; longer synopses get their summary
// on the next line.
const usageWidth = 26

// Commands returns the client commands Run handles, in help order. A caller dispatching on the
// first word of the command line should look it up with Subcommand, since global flags may
// precede it.
func Commands() []Command {
	out := make([]Command, len(commands))
	for i, c := range commands {
		out[i] = c.Command
		out[i].Usages = append([]string(nil), c.Usages...)
	}
	return out
}

func lookup(name string) *command {
	for i := range commands {
		if commands[i].Name == name {
			return &commands[i]
		}
	}
	return nil
}

// Subcommand returns the command word of args (os.Args[1:]) after any leading global flags,
// or "" when there is none. For example Subcommand([]string{"--addr", "h:1", "status"}) is
// "status". It does not validate anything; Run does.
func Subcommand(args []string) string {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			if i+1 < len(args) {
				return args[i+1]
			}
			return ""
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			return a
		}
		name := strings.TrimLeft(a, "-")
		if strings.Contains(name, "=") {
			continue
		}
		switch name {
		case "addr", "o", "output", "timeout":
			i++ // the flag's value is the next argument
		}
	}
	return ""
}

// Usage writes the help text of the client commands and the global flags to w.
func Usage(w io.Writer) {
	fmt.Fprintf(w, "Usage: regent [global flags] <command> [flags] [args]\n\nOperator commands (gRPC client of a regent agent):\n")
	for _, c := range commands {
		for i, u := range c.Usages {
			summary := c.Summary
			if i < len(c.lines) {
				summary = c.lines[i]
			}
			if len(u) > usageWidth {
				fmt.Fprintf(w, "  %s\n  %*s %s\n", u, usageWidth, "", summary)
				continue
			}
			fmt.Fprintln(w, strings.TrimRight(fmt.Sprintf("  %-*s %s", usageWidth, u, summary), " "))
		}
	}
	fmt.Fprint(w, globalHelp)
}

const globalHelp = `
Global flags (before or after the command):
  --addr HOST:PORT    agent gRPC address (default $REGENT_ADDR, else ` + DefaultAddr + `)
  -o table|json       output format (default table); json is protojson with proto field names
  --timeout DURATION  per-request deadline (default 10s)
  --consistent        linearizable reads: answered by the leader at its commit index
`

// Run runs one client command. args is os.Args[1:]: optional global flags, then the command
// word and its arguments. It writes results to stdout and diagnostics to stderr and returns
// ExitOK, ExitError or ExitUsage. Cancelling ctx ends a running watch cleanly.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return runWith(ctx, args, stdout, stderr, os.Getenv, time.Now)
}

// globals are the flags accepted before and after the command word.
type globals struct {
	addr       string
	output     string
	timeout    time.Duration
	consistent bool
}

// runner carries one invocation's settings and connection.
type runner struct {
	g      globals
	stdout io.Writer
	stderr io.Writer
	now    func() time.Time
	ctx    context.Context
	cmd    *command

	conn   *grpc.ClientConn
	client regentv1.RegentClient
}

// errHelp reports that -h was asked for and help has been printed.
var errHelp = errors.New("help requested")

// usageError is a mistake on the command line.
type usageError struct {
	msg string
}

func (e *usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error {
	return &usageError{msg: fmt.Sprintf(format, a...)}
}

func runWith(ctx context.Context, args []string, stdout, stderr io.Writer,
	getenv func(string) string, now func() time.Time) int {
	r := &runner{stdout: stdout, stderr: stderr, now: now, ctx: ctx}
	r.g.addr = getenv(AddrEnv)
	if r.g.addr == "" {
		r.g.addr = DefaultAddr
	}
	r.g.output = "table"
	r.g.timeout = DefaultTimeout

	err := r.dispatch(args)
	if r.conn != nil {
		_ = r.conn.Close()
	}
	return r.report(err)
}

func (r *runner) dispatch(args []string) error {
	fs := r.flagSet("regent")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			Usage(r.stdout)
			return errHelp
		}
		return &usageError{msg: err.Error()}
	}
	rest := fs.Args()
	if len(rest) == 0 {
		return usagef("no command given")
	}
	name := rest[0]
	if name == "help" {
		if len(rest) > 1 {
			if c := lookup(rest[1]); c != nil {
				r.cmd = c
				r.commandHelp(r.stdout, nil)
				return errHelp
			}
			return usagef("unknown command %q", rest[1])
		}
		Usage(r.stdout)
		return errHelp
	}
	c := lookup(name)
	if c == nil {
		return usagef("unknown command %q", name)
	}
	r.cmd = c
	return c.run(r, rest[1:])
}

// report prints err the way its kind asks for and returns the exit code.
func (r *runner) report(err error) int {
	if err == nil {
		return ExitOK
	}
	if errors.Is(err, errHelp) {
		return ExitOK
	}
	var ue *usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(r.stderr, "regent: %s\n", ue.msg)
		if r.cmd != nil {
			for _, u := range r.cmd.Usages {
				fmt.Fprintf(r.stderr, "usage: regent %s\n", u)
			}
			fmt.Fprintf(r.stderr, "Run 'regent help %s' for its flags.\n", r.cmd.Name)
		} else {
			fmt.Fprintf(r.stderr, "Run 'regent help' for the list of commands.\n")
		}
		return ExitUsage
	}
	var re *rpcError
	if errors.As(err, &re) {
		re.print(r.stderr)
		return ExitError
	}
	// Other errors may span lines (a spec file with several problems): prefix each one.
	for _, line := range strings.Split(strings.TrimRight(err.Error(), "\n"), "\n") {
		fmt.Fprintf(r.stderr, "regent: %s\n", line)
	}
	return ExitError
}

// flagSet returns a FlagSet with the global flags bound to r.g, their defaults being the
// values already set (so flags given before the command word survive a second parse).
func (r *runner) flagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&r.g.addr, "addr", r.g.addr, "agent gRPC `HOST:PORT`")
	fs.StringVar(&r.g.output, "o", r.g.output, "output `format`: table or json")
	fs.StringVar(&r.g.output, "output", r.g.output, "same as -o")
	fs.DurationVar(&r.g.timeout, "timeout", r.g.timeout, "per-request `deadline`")
	fs.BoolVar(&r.g.consistent, "consistent", r.g.consistent, "linearizable reads, answered by the leader")
	return fs
}

// parse parses a command's flags, accepting them before, between and after positional
// arguments ("--" ends flags), then checks the global flags. It returns the positional
// arguments.
func (r *runner) parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				r.commandHelp(r.stdout, fs)
				return nil, errHelp
			}
			return nil, &usageError{msg: err.Error()}
		}
		rest := fs.Args()
		consumed := len(args) - len(rest)
		if consumed > 0 && args[consumed-1] == "--" {
			pos = append(pos, rest...)
			break
		}
		if len(rest) == 0 {
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	return pos, r.checkGlobals()
}

func (r *runner) checkGlobals() error {
	switch r.g.output {
	case "table", "json":
	default:
		return usagef("-o %q: want table or json", r.g.output)
	}
	if r.g.timeout <= 0 {
		return usagef("--timeout %s: must be positive", r.g.timeout)
	}
	if r.g.addr == "" {
		return usagef("--addr is empty")
	}
	if !strings.Contains(r.g.addr, "/") { // a plain HOST:PORT, not a gRPC target URI
		if _, port, err := net.SplitHostPort(r.g.addr); err != nil || port == "" {
			return usagef("--addr %q: want HOST:PORT", r.g.addr)
		}
	}
	return nil
}

// commandHelp prints the current command's synopsis, its own flags (from fs when given) and
// the global flags.
func (r *runner) commandHelp(w io.Writer, fs *flag.FlagSet) {
	for _, u := range r.cmd.Usages {
		fmt.Fprintf(w, "Usage: regent %s\n", u)
	}
	fmt.Fprintf(w, "\n%s.\n", r.cmd.Summary)
	if fs == nil {
		fs = r.flagSet(r.cmd.Name)
		r.cmdFlags(fs)
	}
	first := true
	fs.VisitAll(func(f *flag.Flag) {
		if globalFlags[f.Name] {
			return
		}
		if first {
			fmt.Fprintf(w, "\nFlags:\n")
			first = false
		}
		arg, usage := flag.UnquoteUsage(f)
		dashes := "--"
		if len(f.Name) == 1 {
			dashes = "-"
		}
		fmt.Fprintf(w, "  %-19s %s\n", dashes+f.Name+" "+arg, usage)
	})
	fmt.Fprint(w, globalHelp)
}

// watchEventsHelp is the help of `events --watch`.
const watchEventsHelp = "then follow changes to failover events, one line each, until interrupted (Ctrl-C); " +
	"with -o json, one JSON object a line"

// globalFlags are the names flagSet registers on every FlagSet.
var globalFlags = map[string]bool{"addr": true, "o": true, "output": true, "timeout": true, "consistent": true}

// cmdFlags registers the command-specific flags of r.cmd on fs, for help only.
func (r *runner) cmdFlags(fs *flag.FlagSet) {
	switch r.cmd.Name {
	case "cluster":
		fs.String("f", "", "cluster spec `FILE` (YAML), for cluster apply")
	case "channels":
		fs.String("cluster", "", "only this `cluster`")
	case "events":
		fs.String("cluster", "", "only this `cluster`")
		fs.Bool("watch", false, watchEventsHelp)
	case "failover":
		failoverFlags(fs)
	case "switchover":
		switchoverFlags(fs)
	case "pause", "resume":
		pauseFlags(fs, r.cmd.Name == "pause")
	case "watch":
		fs.Uint64("from", 0, "send changes after this Raft `index`; 0 starts with a snapshot")
	}
}

// dial connects the client lazily, after the command line has been checked.
//
// The connection is plaintext for now.
func (r *runner) dial() (regentv1.RegentClient, error) {
	if r.client != nil {
		return r.client, nil
	}
	who := Actor()
	conn, err := grpc.NewClient(r.g.addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			return invoker(metadata.AppendToOutgoingContext(ctx, ActorKey, who), method, req, reply, cc, opts...)
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			return streamer(metadata.AppendToOutgoingContext(ctx, ActorKey, who), desc, cc, method, opts...)
		}))
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", r.g.addr, err)
	}
	r.conn = conn
	r.client = regentv1.NewRegentClient(conn)
	return r.client, nil
}

// callCtx returns the context for one unary request, bounded by --timeout.
func (r *runner) callCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.ctx, r.g.timeout)
}

// ActorKey is the gRPC metadata key that names the operator behind a request; the witnesses
// write it into audit records. (Until the API authenticates callers, it is what the client
// says.)
const ActorKey = "regent-actor"

// Actor names the person running the CLI: $USER (or the uid) at the host name.
func Actor() string {
	who := os.Getenv("USER")
	if who == "" {
		if u, err := user.Current(); err == nil {
			who = u.Username
		}
	}
	host, _ := os.Hostname()
	if host == "" {
		host = "unknown-host"
	}
	return who + "@" + host
}

func (r *runner) readOptions() *regentv1.ReadOptions {
	return &regentv1.ReadOptions{Consistent: r.g.consistent}
}

func (r *runner) json() bool { return r.g.output == "json" }
