// Package lab runs a whole local regent deployment on loopback for trying it out: three
// witnesses in three "regions", each with its own data directory. Later issues add PostgreSQL
// and DNS to it.
package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/regentdb/regent/agent"
	"github.com/regentdb/regent/config"
	"github.com/regentdb/regent/internal/freeport"
)

// Regions are the lab's three regions, one witness each.
var Regions = []string{"us-east", "eu-west", "ap-south"}

// Options configure a lab.
type Options struct {
	// Dir holds the witnesses' data; empty means a new temporary directory removed at the end.
	Dir string
	// Witnesses is how many witnesses to start (3 or 5; default 3).
	Witnesses int
	// Logger receives the witnesses' logs.
	Logger *slog.Logger
}

// Lab is a running local deployment.
type Lab struct {
	Dir     string
	Agents  []*agent.Agent
	Configs []config.Agent
	tempDir bool
}

// Start launches the witnesses and returns once they all listen; they bootstrap by themselves.
func Start(opts Options) (*Lab, error) {
	if opts.Witnesses == 0 {
		opts.Witnesses = 3
	}
	if opts.Witnesses != 3 && opts.Witnesses != 5 {
		return nil, fmt.Errorf("the lab runs 3 or 5 witnesses, not %d", opts.Witnesses)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	l := &Lab{Dir: opts.Dir}
	if l.Dir == "" {
		d, err := os.MkdirTemp("", "regent-lab-")
		if err != nil {
			return nil, fmt.Errorf("create lab directory: %w", err)
		}
		l.Dir, l.tempDir = d, true
	}
	cfgs, err := l.configs(opts.Witnesses)
	if err != nil {
		return nil, err
	}
	l.Configs = cfgs
	for _, c := range cfgs {
		a, err := agent.Start(c, opts.Logger)
		if err != nil {
			l.Stop()
			return nil, fmt.Errorf("start witness %s: %w", c.NodeName, err)
		}
		l.Agents = append(l.Agents, a)
	}
	return l, nil
}

// configs returns the witnesses' configurations, reusing the ports of an earlier run in the same
// directory so a restarted lab finds its own cluster again.
func (l *Lab) configs(n int) ([]config.Agent, error) {
	var out []config.Agent
	var joins []string
	for i := range n {
		name := fmt.Sprintf("w%d", i+1)
		path := filepath.Join(l.Dir, name+".yaml")
		if data, err := os.ReadFile(path); err == nil {
			c, err := config.Parse(data, path)
			if err != nil {
				return nil, fmt.Errorf("lab directory %s holds a bad config (remove the directory to start afresh): %w", l.Dir, err)
			}
			out = append(out, *c)
			joins = append(joins, c.GossipAddr)
			continue
		}
		var addrs [4]string
		for j := range addrs {
			a, err := freeport.Addr()
			if err != nil {
				return nil, err
			}
			addrs[j] = a
		}
		text := fmt.Sprintf("node_name: %s\nregion: %s\ndata_dir: %s\nraft_addr: %s\ngossip_addr: %s\ngrpc_addr: %s\nhttp_addr: %s\nbootstrap_expect: %d\nraft_multiplier: 0.5\n",
			name, Regions[i%len(Regions)], filepath.Join(l.Dir, name), addrs[0], addrs[1], addrs[2], addrs[3], n)
		c, err := config.Parse([]byte(text), path)
		if err != nil {
			return nil, fmt.Errorf("lab config for %s: %w", name, err)
		}
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			return nil, fmt.Errorf("write lab config: %w", err)
		}
		out = append(out, *c)
		joins = append(joins, c.GossipAddr)
	}
	for i := range out {
		for j, g := range joins {
			if i != j {
				out[i].Join = append(out[i].Join, g)
			}
		}
	}
	return out, nil
}

// WaitReady waits until every witness knows a leader and has caught up.
func (l *Lab) WaitReady(ctx context.Context) error {
	for {
		ready := true
		for _, a := range l.Agents {
			if ok, _ := a.Ready(); !ok {
				ready = false
			}
		}
		if ready {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("witnesses not ready: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Describe writes the witnesses' addresses and how to talk to them.
func (l *Lab) Describe(w io.Writer) {
	fmt.Fprintf(w, "regent lab: %d witnesses, data in %s\n", len(l.Configs), l.Dir)
	for _, c := range l.Configs {
		fmt.Fprintf(w, "  %-3s %-9s grpc %-16s http %-16s raft %-16s gossip %s\n", c.NodeName, c.Region, c.GRPCAddr, c.HTTPAddr, c.RaftAddr, c.GossipAddr)
	}
	fmt.Fprintf(w, "\nTry, in another shell:\n  export REGENT_ADDR=%s\n  regent status\n  regent cluster apply -f %s\n\n",
		l.Configs[0].GRPCAddr, filepath.Join(l.Dir, "orders.yaml"))
}

// WriteExampleSpec writes an example cluster spec into the lab directory.
func (l *Lab) WriteExampleSpec() error {
	const spec = `name: orders
primary: pg-us
nodes:
  - {name: pg-us, region: us-east,  host: 127.0.0.1, port: 5432}
  - {name: pg-eu, region: eu-west,  host: 127.0.0.1, port: 5433}
  - {name: pg-ap, region: ap-south, host: 127.0.0.1, port: 5434}
policy: {}
`
	return os.WriteFile(filepath.Join(l.Dir, "orders.yaml"), []byte(spec), 0o644)
}

// Stop shuts every witness down and removes a temporary directory.
func (l *Lab) Stop() error {
	var errs []error
	for _, a := range l.Agents {
		errs = append(errs, a.Shutdown())
	}
	if l.tempDir {
		errs = append(errs, os.RemoveAll(l.Dir))
	}
	return errors.Join(errs...)
}
