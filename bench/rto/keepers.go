package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/regentdb/regent/config"
	"github.com/regentdb/regent/fencing"
	"github.com/regentdb/regent/internal/freeport"
	"github.com/regentdb/regent/keeper"
	"github.com/regentdb/regent/lab"
	"github.com/regentdb/regent/pgtest"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// keepers runs a keeper (in this process, default settings) beside each node of a lab.
type keepers struct {
	l      *lab.Lab
	byNode map[string]*keeper.Keeper
}

// startKeepers starts a keeper beside each of the lab's nodes, re-applies the lab's cluster with
// their keeper_addr, and waits until the primary's keeper holds its lease and takes writes.
func startKeepers(ctx context.Context, l *lab.Lab, logger *slog.Logger) (*keepers, error) {
	ks := &keepers{l: l, byNode: map[string]*keeper.Keeper{}}
	sp := proto.Clone(l.Spec).(*regentv1.ClusterSpec)
	addrs := map[string][2]string{}
	for _, n := range sp.GetNodes() {
		g, err := freeport.Addr()
		if err != nil {
			return nil, err
		}
		h, err := freeport.Addr()
		if err != nil {
			return nil, err
		}
		addrs[n.GetName()] = [2]string{g, h}
		n.KeeperAddr = g
	}
	if err := apply(ctx, l, sp); err != nil {
		return nil, err
	}
	var ws []string
	for _, c := range l.Configs {
		ws = append(ws, c.GRPCAddr)
	}
	dir, err := os.MkdirTemp("", "regent-rto-keepers-")
	if err != nil {
		return nil, err
	}
	for _, n := range l.Nodes {
		s := n.Server
		cfg := keeper.Config{
			NodeName: n.Name, Cluster: lab.ClusterName, DataDir: s.DataDir, BinDir: l.Bench.BinDir(),
			Host: s.Host, Port: uint16(s.Port),
			Postgres: config.Postgres{User: pgtest.BootstrapUser, Database: "postgres", SSLMode: "disable"},
			// pgtest passes each server's settings on its command line; so must pg_ctl.
			PostgresOptions: []string{"-p", strconv.Itoa(s.Port), "-c", "listen_addresses=" + s.Host,
				"-c", "unix_socket_directories=" + s.Dir, "-c", "cluster_name=" + s.Name},
			PostgresLog: filepath.Join(s.Dir, "keeper-started.log"),
			Witnesses:   ws,
			ListenGRPC:  addrs[n.Name][0],
			ListenHTTP:  addrs[n.Name][1],
			StateDir:    filepath.Join(dir, n.Name),
			// What a configuration file that sets none of these gets.
			StartTimeout: config.Duration{Duration: keeper.DefaultStartTimeout},
			LeaseTTL:     config.Duration{Duration: keeper.DefaultLeaseTTL},
			LeaseDrift:   fencing.DefaultDrift,
			FenceMargin:  config.Duration{Duration: keeper.DefaultFenceMargin},
			Log:          config.Log{Format: "text", Level: "info"},
		}
		if os.Geteuid() == 0 {
			cfg.RunAs = "postgres"
		}
		k, err := keeper.Start(cfg, logger.With("keeper", n.Name))
		if err != nil {
			ks.stop()
			return nil, fmt.Errorf("start the keeper of %s: %w", n.Name, err)
		}
		ks.byNode[n.Name] = k
	}
	p := ks.byNode[sp.GetPrimary()]
	for {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		st := p.Status(sctx, false)
		cancel()
		if st.HoldsLease && st.Answering && !st.ReadOnly {
			return ks, nil
		}
		select {
		case <-ctx.Done():
			ks.stop()
			return nil, fmt.Errorf("the primary's keeper does not hold its lease (held %v, answering %v, read-only %v): %w", st.HoldsLease, st.Answering, st.ReadOnly, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// apply applies the cluster spec through the lab's first witness, retrying elections.
func apply(ctx context.Context, l *lab.Lab, sp *regentv1.ClusterSpec) error {
	conn, err := grpc.NewClient(l.Configs[0].GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	for {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := regentv1.NewRegentClient(conn).ApplyCluster(cctx, &regentv1.ApplyClusterRequest{Spec: sp})
		cancel()
		if err == nil {
			return nil
		}
		if c := status.Code(err); c != codes.Unavailable && c != codes.DeadlineExceeded {
			return fmt.Errorf("apply the cluster with keeper addresses: %w", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("apply the cluster with keeper addresses: %w (last error: %v)", ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// stop shuts the keepers down and stops any server a keeper started (not pgtest's child, so
// the lab's Stop would leave it running).
func (ks *keepers) stop() {
	for _, k := range ks.byNode {
		_ = k.Shutdown()
	}
	for _, n := range ks.l.Nodes {
		s := n.Server
		if s.Running() {
			continue
		}
		if _, err := os.Stat(filepath.Join(s.DataDir, "postmaster.pid")); err != nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if _, err := ks.l.Bench.Run(ctx, "pg_ctl", "status", "-D", s.DataDir); err == nil {
			_, _ = ks.l.Bench.Run(ctx, "pg_ctl", "stop", "-D", s.DataDir, "-m", "immediate", "-w")
		}
		cancel()
	}
}

// killHost plays the loss of the primary's host: its keeper (Keeper.Kill: nothing fenced) and
// its postmaster (SIGKILL) die in the same instant.
func (ks *keepers) killHost() (lab.Killed, error) {
	p := ks.l.Primary()
	if p == nil || ks.byNode[p.Name] == nil {
		return lab.Killed{}, errors.New("no primary with a keeper")
	}
	pid := p.Server.PID()
	if pid == 0 {
		return lab.Killed{}, fmt.Errorf("primary %s is not running under pgtest", p.Name)
	}
	k := lab.Killed{Node: *p, PID: pid, At: time.Now()}
	done := make(chan struct{})
	go func() { ks.byNode[p.Name].Kill(); close(done) }()
	err := p.Server.Kill9()
	<-done
	if err != nil {
		return k, fmt.Errorf("kill primary %s: %w", p.Name, err)
	}
	return k, nil
}

// breakRestart makes the primary's PostgreSQL unable to start (a line that is not a setting
// appended to its postgresql.conf) and kills its postmaster with SIGKILL; the keeper stays.
func breakRestart(l *lab.Lab) (lab.Killed, error) {
	p := l.Primary()
	if p == nil {
		return lab.Killed{}, errors.New("no primary")
	}
	f, err := os.OpenFile(filepath.Join(p.Server.DataDir, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return lab.Killed{}, fmt.Errorf("break the configuration of %s: %w", p.Name, err)
	}
	_, err = f.WriteString("\nbench/rto: this line is not a setting, so PostgreSQL refuses to start\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return lab.Killed{}, fmt.Errorf("break the configuration of %s: %w", p.Name, err)
	}
	return l.KillPrimary()
}
