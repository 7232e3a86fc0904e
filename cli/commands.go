package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
	"github.com/regentdb/regent/spec"
)

// statusEvents is how many failover events `status` shows.
const statusEvents = 5

// noArgs parses a command that takes flags only.
func (r *runner) noArgs(args []string) error {
	pos, err := r.parse(r.flagSet(r.cmd.Name), args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("%s takes no arguments, got %q", r.cmd.Name, strings.Join(pos, " "))
	}
	return nil
}

func (r *runner) status(args []string) error {
	if err := r.noArgs(args); err != nil {
		return err
	}
	c, err := r.dial()
	if err != nil {
		return err
	}
	ctx, cancel := r.callCtx()
	defer cancel()
	resp, err := c.GetState(ctx, &regentv1.GetStateRequest{Read: r.readOptions()})
	if err != nil {
		return r.rpcErr("get state", err)
	}
	if r.json() {
		return printJSON(r.stdout, resp)
	}
	return r.printState(resp)
}

// printState renders GetState as a header line followed by one section per kind of thing.
func (r *runner) printState(s *regentv1.GetStateResponse) error {
	w := r.stdout
	now := r.now()
	leader := s.GetLeader()
	if leader == "" {
		leader = "none (election in progress)"
	}
	fmt.Fprintf(w, "leader: %s   index: %d   served by: %s\n", leader, s.GetIndex(), dash(s.GetServedBy()))

	fmt.Fprintf(w, "\nMEMBERS\n")
	if len(s.GetMembers()) == 0 {
		fmt.Fprintln(w, "no members")
	} else if err := printMembers(w, s.GetMembers()); err != nil {
		return err
	}

	fmt.Fprintf(w, "\nCLUSTERS\n")
	if len(s.GetClusters()) == 0 {
		fmt.Fprintln(w, noClusters)
	} else {
		if err := printClusters(w, s.GetClusters()); err != nil {
			return err
		}
		for _, c := range sortedClusters(s.GetClusters()) {
			paused := ""
			if c.GetPaused() {
				paused = ", paused"
			}
			fmt.Fprintf(w, "\nCLUSTER %s (primary %s, spec version %d%s)\n", c.GetName(),
				dash(c.GetPrimary()), c.GetSpecVersion(), paused)
			printClusterNotes(w, c, s.GetFailoverEvents(), now)
			if len(c.GetNodes()) == 0 {
				fmt.Fprintln(w, "no nodes")
				continue
			}
			if err := printNodes(w, c, s.GetKeepers()); err != nil {
				return err
			}
		}
	}

	fmt.Fprintf(w, "\nCHANNELS\n")
	if len(s.GetChannels()) == 0 {
		fmt.Fprintln(w, noChannels)
	} else if err := printChannels(w, s.GetChannels(), now); err != nil {
		return err
	}

	events := sortedEvents(s.GetFailoverEvents())
	if len(events) > statusEvents {
		fmt.Fprintf(w, "\nFAILOVER EVENTS (last %d of %d; all: regent events)\n", statusEvents, len(events))
		events = events[len(events)-statusEvents:]
	} else {
		fmt.Fprintf(w, "\nFAILOVER EVENTS\n")
	}
	if len(events) == 0 {
		fmt.Fprintln(w, "no failover events")
		return nil
	}
	return printEvents(w, events, now)
}

// Messages for empty lists, saying what would fill them.
const (
	noClusters = "no clusters (apply one with: regent cluster apply -f spec.yaml)"
	noChannels = "no replication channels (a cluster gets one per pair of regions holding its nodes)"
)

func (r *runner) members(args []string) error {
	fs := r.flagSet("members")
	pos, err := r.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		return r.listMembers()
	}
	switch pos[0] {
	case "remove", "rm":
		if len(pos) != 2 {
			return usagef("members remove takes exactly one NAME, got %d arguments", len(pos)-1)
		}
		return r.removeMember(pos[1])
	case "list", "ls":
		if len(pos) != 1 {
			return usagef("members list takes no arguments")
		}
		return r.listMembers()
	default:
		return usagef("unknown members subcommand %q", pos[0])
	}
}

func (r *runner) listMembers() error {
	c, err := r.dial()
	if err != nil {
		return err
	}
	ctx, cancel := r.callCtx()
	defer cancel()
	resp, err := c.Members(ctx, &regentv1.MembersRequest{Read: r.readOptions()})
	if err != nil {
		return r.rpcErr("list members", err)
	}
	if r.json() {
		return printJSON(r.stdout, resp)
	}
	leader := resp.GetLeader()
	if leader == "" {
		leader = "none (election in progress)"
	}
	fmt.Fprintf(r.stdout, "leader: %s\n", leader)
	if len(resp.GetMembers()) == 0 {
		fmt.Fprintln(r.stdout, "no members")
	} else if err := printMembers(r.stdout, resp.GetMembers()); err != nil {
		return err
	}
	if len(resp.GetKeepers()) == 0 {
		return nil // keepers without gossip_addr are not in gossip: nothing to say
	}
	fmt.Fprintf(r.stdout, "\nKEEPERS (in the gossip of the witness that answered; never Raft members)\n")
	return printKeepers(r.stdout, resp.GetKeepers(), r.now())
}

func (r *runner) removeMember(name string) error {
	c, err := r.dial()
	if err != nil {
		return err
	}
	ctx, cancel := r.callCtx()
	defer cancel()
	resp, err := c.RemoveMember(ctx, &regentv1.RemoveMemberRequest{Name: name})
	if err != nil {
		return r.rpcErr("remove member "+name, err)
	}
	if r.json() {
		return printJSON(r.stdout, resp)
	}
	fmt.Fprintf(r.stdout, "member %s removed (index %d)\n", name, resp.GetIndex())
	return nil
}

func (r *runner) cluster(args []string) error {
	var file string
	fs := r.flagSet("cluster")
	fs.StringVar(&file, "f", "", "cluster spec `FILE` (YAML), for cluster apply")
	pos, err := r.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		return usagef("cluster needs a subcommand: apply, list or delete")
	}
	sub, rest := pos[0], pos[1:]
	if file != "" && sub != "apply" {
		return usagef("-f is for cluster apply only")
	}
	switch sub {
	case "apply":
		if file == "" && len(rest) == 1 {
			file = rest[0] // tolerate `cluster apply spec.yaml`
			rest = nil
		}
		if len(rest) > 0 {
			return usagef("cluster apply takes no arguments besides -f FILE, got %q", strings.Join(rest, " "))
		}
		if file == "" {
			return usagef("cluster apply needs -f FILE")
		}
		return r.applyCluster(file)
	case "list", "ls":
		if len(rest) > 0 {
			return usagef("cluster list takes no arguments, got %q", strings.Join(rest, " "))
		}
		return r.listClusters()
	case "delete", "rm":
		if len(rest) != 1 {
			return usagef("cluster delete takes exactly one NAME, got %d arguments", len(rest))
		}
		return r.deleteCluster(rest[0])
	default:
		return usagef("unknown cluster subcommand %q (want apply, list or delete)", sub)
	}
}

// specError is a cluster spec file that did not parse; each line of its message already
// names the file, line and field.
type specError struct{ err error }

func (e *specError) Error() string { return e.err.Error() }
func (e *specError) Unwrap() error { return e.err }

func (r *runner) applyCluster(file string) error {
	s, err := spec.ParseFile(file)
	if err != nil {
		return &specError{err: err}
	}
	c, err := r.dial()
	if err != nil {
		return err
	}
	ctx, cancel := r.callCtx()
	defer cancel()
	resp, err := c.ApplyCluster(ctx, &regentv1.ApplyClusterRequest{Spec: s})
	if err != nil {
		return r.rpcErr("apply cluster "+s.GetName(), err)
	}
	for _, w := range resp.GetWarnings() {
		fmt.Fprintf(r.stderr, "warning: %s\n", w)
	}
	if r.json() {
		return printJSON(r.stdout, resp)
	}
	name := resp.GetCluster().GetName()
	if name == "" {
		name = s.GetName()
	}
	verb := "updated"
	if resp.GetCreated() {
		verb = "created"
	}
	fmt.Fprintf(r.stdout, "cluster %s %s (spec version %d)\n", name, verb, resp.GetCluster().GetSpecVersion())
	return nil
}

func (r *runner) listClusters() error {
	c, err := r.dial()
	if err != nil {
		return err
	}
	ctx, cancel := r.callCtx()
	defer cancel()
	resp, err := c.ListClusters(ctx, &regentv1.ListClustersRequest{Read: r.readOptions()})
	if err != nil {
		return r.rpcErr("list clusters", err)
	}
	if r.json() {
		return printJSON(r.stdout, resp)
	}
	if len(resp.GetClusters()) == 0 {
		fmt.Fprintln(r.stdout, noClusters)
		return nil
	}
	return printClusters(r.stdout, resp.GetClusters())
}

func (r *runner) deleteCluster(name string) error {
	c, err := r.dial()
	if err != nil {
		return err
	}
	ctx, cancel := r.callCtx()
	defer cancel()
	resp, err := c.DeleteCluster(ctx, &regentv1.DeleteClusterRequest{Name: name})
	if err != nil {
		return r.rpcErr("delete cluster "+name, err)
	}
	if r.json() {
		return printJSON(r.stdout, resp)
	}
	fmt.Fprintf(r.stdout, "cluster %s deleted (index %d)\n", name, resp.GetIndex())
	return nil
}

// clusterFilter parses a command whose only own flag is --cluster.
func (r *runner) clusterFilter(args []string) (string, error) {
	var cluster string
	fs := r.flagSet(r.cmd.Name)
	fs.StringVar(&cluster, "cluster", "", "only this `cluster`")
	pos, err := r.parse(fs, args)
	if err != nil {
		return "", err
	}
	if len(pos) > 0 {
		return "", usagef("%s takes no arguments, got %q (filter with --cluster C)", r.cmd.Name, strings.Join(pos, " "))
	}
	return cluster, nil
}

func forCluster(cluster string) string {
	if cluster == "" {
		return ""
	}
	return " for cluster " + cluster
}

func (r *runner) channels(args []string) error {
	cluster, err := r.clusterFilter(args)
	if err != nil {
		return err
	}
	c, err := r.dial()
	if err != nil {
		return err
	}
	ctx, cancel := r.callCtx()
	defer cancel()
	resp, err := c.ListChannels(ctx, &regentv1.ListChannelsRequest{Read: r.readOptions(), Cluster: cluster})
	if err != nil {
		return r.rpcErr("list channels"+forCluster(cluster), err)
	}
	if r.json() {
		return printJSON(r.stdout, resp)
	}
	if len(resp.GetChannels()) == 0 {
		if cluster != "" {
			fmt.Fprintf(r.stdout, "no replication channels for cluster %s\n", cluster)
		} else {
			fmt.Fprintln(r.stdout, noChannels)
		}
		return nil
	}
	return printChannels(r.stdout, resp.GetChannels(), r.now())
}

func (r *runner) events(args []string) error {
	var cluster string
	var follow bool
	fs := r.flagSet("events")
	fs.StringVar(&cluster, "cluster", "", "only this `cluster`")
	fs.BoolVar(&follow, "watch", false, watchEventsHelp)
	pos, err := r.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("events takes no arguments, got %q (filter with --cluster C)", strings.Join(pos, " "))
	}
	c, err := r.dial()
	if err != nil {
		return err
	}
	ctx, cancel := r.callCtx()
	defer cancel()
	resp, err := c.ListFailoverEvents(ctx, &regentv1.ListFailoverEventsRequest{Read: r.readOptions(), Cluster: cluster})
	if err != nil {
		if follow {
			return r.watchErr("list failover events"+forCluster(cluster), err) // Ctrl-C before the stream began
		}
		return r.rpcErr("list failover events"+forCluster(cluster), err)
	}
	if follow {
		return r.followEvents(c, cluster, resp)
	}
	if r.json() {
		return printJSON(r.stdout, resp)
	}
	return r.printEventList(cluster, resp.GetFailoverEvents())
}

// printEventList prints events as detail blocks, oldest first, or says there are none.
func (r *runner) printEventList(cluster string, events []*regentv1.FailoverEvent) error {
	if len(events) == 0 {
		_, err := fmt.Fprintf(r.stdout, "no failover events%s\n", forCluster(cluster))
		return writeErr(err)
	}
	return printEventBlocks(r.stdout, sortedEvents(events), r.now())
}

// watch follows the Watch stream until the server ends it or ctx is cancelled. --timeout
// does not apply: a watch is meant to run until stopped.
func (r *runner) watch(args []string) error {
	var from uint64
	fs := r.flagSet("watch")
	fs.Uint64Var(&from, "from", 0, "send changes after this Raft `index`; 0 starts with a snapshot")
	pos, err := r.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("watch takes no arguments, got %q", strings.Join(pos, " "))
	}
	c, err := r.dial()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(r.ctx)
	defer cancel()
	stream, err := c.Watch(ctx, &regentv1.WatchRequest{FromIndex: from})
	if err != nil {
		return r.watchErr("watch", err)
	}
	for {
		ev, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return r.watchErr("watch", err)
		}
		if err := r.printWatchEvent(ev); err != nil {
			return err
		}
	}
}

// watchErr treats the end of the caller's context (Ctrl-C) as a clean stop.
func (r *runner) watchErr(what string, err error) error {
	if r.ctx.Err() != nil && (status.Code(err) == codes.Canceled || errors.Is(err, context.Canceled)) {
		return nil
	}
	return r.rpcErr(what, err)
}

func (r *runner) printWatchEvent(ev *regentv1.WatchEvent) error {
	if r.json() {
		out, err := marshalJSON(ev, false)
		if err != nil {
			return err
		}
		if _, err := r.stdout.Write(out); err != nil {
			return fmt.Errorf("write output: %w", err)
		}
		return nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d %s %s", ev.GetIndex(), dash(ev.GetKind()), dash(ev.GetKey()))
	if ev.GetDeleted() {
		b.WriteString(" deleted")
	}
	if st := ev.GetState(); st != nil {
		fmt.Fprintf(&b, " clusters=%d members=%d channels=%d failover_events=%d",
			len(st.GetClusters()), len(st.GetMembers()), len(st.GetChannels()), len(st.GetFailoverEvents()))
	}
	b.WriteByte('\n')
	if _, err := io.WriteString(r.stdout, b.String()); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	return nil
}
