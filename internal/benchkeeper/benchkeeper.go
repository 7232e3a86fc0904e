// Package benchkeeper builds `regent keeper` configurations for the servers of a pgtest bench,
// for the tests, benchmarks and `regent lab` that run a keeper beside each bench server.
package benchkeeper

import (
	"fmt"
	"path/filepath"
	"strconv"
	"time"

	"github.com/regentdb/regent/config"
	"github.com/regentdb/regent/fencing"
	"github.com/regentdb/regent/internal/freeport"
	"github.com/regentdb/regent/keeper"
	"github.com/regentdb/regent/pgtest"
)

// Options are the parts of a keeper's configuration that differ between users; zero fields
// take the keeper's defaults.
type Options struct {
	// Cluster is the cluster name (required).
	Cluster string
	// Node is the node's name in the cluster spec; default the server's name.
	Node string
	// Witnesses are the witnesses' gRPC addresses (all of them).
	Witnesses []string
	// StateDir holds keeper-state.json (required).
	StateDir string
	// LeaseTTL, LeaseDrift and FenceMargin tune the lease (see keeper/DESIGN.md).
	LeaseTTL    time.Duration
	LeaseDrift  float64
	FenceMargin time.Duration
	// LogLevel is the keeper's log level; default info.
	LogLevel string
	// GossipJoin are witnesses' gossip addresses: when set, the keeper gossips (gossip_addr on a
	// free loopback port, join these) and the witnesses list it in Members. Empty: no gossip.
	GossipJoin []string
}

// Config returns the configuration of a keeper beside server s of bench b, listening on two
// free loopback ports. The keeper starts s with the settings pgtest gives it on its command line
// (port, listen address, socket directory, cluster_name), as the postgres user when running as
// root, and logs in locally as the bench's bootstrap superuser (trusted on loopback).
func Config(b *pgtest.Bench, s *pgtest.Server, o Options) (keeper.Config, error) {
	if o.Cluster == "" || o.StateDir == "" {
		return keeper.Config{}, fmt.Errorf("benchkeeper: Cluster and StateDir are required")
	}
	node := o.Node
	if node == "" {
		node = s.Name
	}
	grpcAddr, err := freeport.Addr()
	if err != nil {
		return keeper.Config{}, err
	}
	httpAddr, err := freeport.Addr()
	if err != nil {
		return keeper.Config{}, err
	}
	var gossipAddr string
	if len(o.GossipJoin) > 0 {
		if gossipAddr, err = freeport.Addr(); err != nil {
			return keeper.Config{}, err
		}
	}
	level := o.LogLevel
	if level == "" {
		level = "info"
	}
	if o.LeaseTTL == 0 {
		o.LeaseTTL = keeper.DefaultLeaseTTL
	}
	if o.LeaseDrift == 0 {
		o.LeaseDrift = fencing.DefaultDrift
	}
	if o.FenceMargin == 0 {
		o.FenceMargin = keeper.DefaultFenceMargin
	}
	return keeper.Config{
		NodeName: node, Cluster: o.Cluster, DataDir: s.DataDir, BinDir: b.BinDir(),
		Host: s.Host, Port: uint16(s.Port),
		Postgres: config.Postgres{User: pgtest.BootstrapUser, Database: "postgres", SSLMode: "disable"},
		RunAs:    "postgres",
		PostgresOptions: []string{"-p", strconv.Itoa(s.Port), "-c", "listen_addresses=" + s.Host,
			"-c", "unix_socket_directories=" + s.Dir, "-c", "cluster_name=" + s.Name},
		PostgresLog:  filepath.Join(s.Dir, "keeper-postgres.log"),
		StartTimeout: config.Duration{Duration: time.Minute},
		Witnesses:    o.Witnesses,
		ListenGRPC:   grpcAddr,
		ListenHTTP:   httpAddr,
		GossipAddr:   gossipAddr,
		Join:         o.GossipJoin,
		StateDir:     o.StateDir,
		LeaseTTL:     config.Duration{Duration: o.LeaseTTL},
		LeaseDrift:   o.LeaseDrift,
		FenceMargin:  config.Duration{Duration: o.FenceMargin},
		Log:          config.Log{Format: "text", Level: level},
	}, nil
}
