// Package gossip runs memberlist among the witnesses: each witness advertises its identity and
// addresses in its node metadata, and the agent learns from it who is alive, which witnesses
// are ready to bootstrap Raft, and where each one's gRPC API listens.
package gossip

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/regentdb/regent/logging"
)

// Meta is what a witness tells the others about itself.
type Meta struct {
	// ID is the witness's stable identity (its Raft server ID).
	ID string `json:"id"`
	// Region of the witness.
	Region string `json:"region"`
	// RaftAddr, GRPCAddr and HTTPAddr are where its Raft, API and HTTP endpoints listen.
	RaftAddr string `json:"raft"`
	GRPCAddr string `json:"grpc"`
	HTTPAddr string `json:"http"`
	// HasState is true once the witness has Raft state (it bootstrapped or was added), so a
	// fresh witness seeing it must join rather than bootstrap.
	HasState bool `json:"has_state"`
}

// Peer is a witness as gossip currently sees it.
type Peer struct {
	Name string
	// State is alive, suspect, dead or left.
	State string
	// Addr is its gossip address.
	Addr string
	Meta Meta
}

// Config configures the local gossip member.
type Config struct {
	// Name is the witness's node name, unique in the cluster.
	Name string
	// BindAddr is the host:port memberlist binds (TCP and UDP) and advertises.
	BindAddr string
	// Fast selects memberlist's loopback timings (tests and the lab) instead of LAN timings.
	Fast bool
	// Meta is the initial metadata.
	Meta   Meta
	Logger *slog.Logger
}

// Gossip is a running memberlist member.
type Gossip struct {
	list    *memberlist.Memberlist
	mu      sync.Mutex
	meta    Meta
	peers   map[string]Peer
	changed chan struct{}
}

// New starts a memberlist member; call Join to contact others.
func New(cfg Config) (*Gossip, error) {
	host, portStr, err := net.SplitHostPort(cfg.BindAddr)
	if err != nil {
		return nil, fmt.Errorf("gossip address %q is not host:port: %w", cfg.BindAddr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("gossip address %q has a bad port: %w", cfg.BindAddr, err)
	}
	g := &Gossip{meta: cfg.Meta, peers: map[string]Peer{}, changed: make(chan struct{}, 1)}
	mc := memberlist.DefaultLANConfig()
	if cfg.Fast {
		mc = memberlist.DefaultLocalConfig()
	}
	mc.Name = cfg.Name
	mc.BindAddr = host
	mc.BindPort = port
	mc.AdvertiseAddr = host
	mc.AdvertisePort = port
	mc.Delegate = (*delegate)(g)
	mc.Events = (*events)(g)
	logger := cfg.Logger
	if logger == nil {
		logger = logging.Discard()
	}
	mc.Logger = logging.NewStdLogger(logger.With("component", "memberlist"))
	list, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("start gossip on %s (is the port free for TCP and UDP?): %w", cfg.BindAddr, err)
	}
	g.list = list
	return g, nil
}

// Join contacts the given gossip addresses; it succeeds if at least one answered.
func (g *Gossip) Join(addrs []string) (int, error) {
	if len(addrs) == 0 {
		return 0, nil
	}
	n, err := g.list.Join(addrs)
	if n == 0 && err != nil {
		return 0, fmt.Errorf("join gossip via %v: %w", addrs, err)
	}
	return n, nil
}

// Peers returns every witness gossip has heard of, this one included, sorted by name, with
// its last known state (alive, dead or left). It reads a copy kept from memberlist's events,
// because memberlist's own Members() hands out nodes it keeps mutating.
func (g *Gossip) Peers() []Peer {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]Peer, 0, len(g.peers))
	for _, p := range g.peers {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// record copies a node's facts; memberlist calls the event delegate under its own lock.
func (g *Gossip) record(n *memberlist.Node) {
	p := Peer{Name: n.Name, State: stateName(n.State), Addr: net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))}
	if err := json.Unmarshal(n.Meta, &p.Meta); err != nil {
		return // not a regent witness, or a garbled record: ignore it
	}
	g.mu.Lock()
	g.peers[n.Name] = p
	g.mu.Unlock()
	g.notify()
}

func stateName(s memberlist.NodeStateType) string {
	switch s {
	case memberlist.StateAlive:
		return "alive"
	case memberlist.StateSuspect:
		return "suspect"
	case memberlist.StateDead:
		return "dead"
	case memberlist.StateLeft:
		return "left"
	default:
		return "unknown"
	}
}

// Changed is signalled (non-blocking, coalesced) whenever membership or metadata changes.
func (g *Gossip) Changed() <-chan struct{} { return g.changed }

func (g *Gossip) notify() {
	select {
	case g.changed <- struct{}{}:
	default:
	}
}

// SetHasState updates the advertised HasState flag and spreads it.
func (g *Gossip) SetHasState(v bool) error {
	g.mu.Lock()
	if g.meta.HasState == v {
		g.mu.Unlock()
		return nil
	}
	g.meta.HasState = v
	g.mu.Unlock()
	if err := g.list.UpdateNode(5 * time.Second); err != nil {
		return fmt.Errorf("spread gossip metadata: %w", err)
	}
	return nil
}

// LocalName is this member's name.
func (g *Gossip) LocalName() string { return g.list.LocalNode().Name }

// Leave announces departure and stops the member.
func (g *Gossip) Leave(timeout time.Duration) error {
	err := g.list.Leave(timeout)
	if serr := g.list.Shutdown(); err == nil {
		err = serr
	}
	return err
}

// delegate serves memberlist's Delegate: node metadata only, no user messages.
type delegate Gossip

func (d *delegate) NodeMeta(limit int) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	b, _ := json.Marshal(d.meta) // plain struct of strings: cannot fail
	if len(b) > limit {
		return nil
	}
	return b
}
func (d *delegate) NotifyMsg([]byte)                {}
func (d *delegate) GetBroadcasts(int, int) [][]byte { return nil }
func (d *delegate) LocalState(bool) []byte          { return nil }
func (d *delegate) MergeRemoteState([]byte, bool)   {}

// events serves memberlist's EventDelegate: it keeps a copy of each node and signals Changed.
type events Gossip

func (e *events) NotifyJoin(n *memberlist.Node)   { (*Gossip)(e).record(n) }
func (e *events) NotifyLeave(n *memberlist.Node)  { (*Gossip)(e).record(n) }
func (e *events) NotifyUpdate(n *memberlist.Node) { (*Gossip)(e).record(n) }
