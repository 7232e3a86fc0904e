// Package gossip runs memberlist among the witnesses and the keepers: each member advertises its
// role, identity and addresses in its node metadata. The agent learns from the witnesses' records
// who is alive, which witnesses are ready to bootstrap Raft, and where each one's gRPC API
// listens; the keepers' records only give the witnesses a membership view of the keepers (Peers
// never returns a keeper, so nothing that builds Raft membership can see one).
package gossip

import (
	"encoding/json"
	"errors"
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

// Roles a member advertises in Meta.Role.
const (
	// RoleWitness is the zero value, so that a witness's metadata without a role (from before
	// keepers gossiped) still reads as a witness's.
	RoleWitness = ""
	// RoleKeeper marks a `regent keeper`: it never joins Raft and never counts toward
	// bootstrap_expect.
	RoleKeeper = "keeper"
)

// MaxMetaSize is memberlist's limit on a member's metadata (memberlist.MetaMaxSize).
const MaxMetaSize = memberlist.MetaMaxSize

// ErrMetaTooLarge is wrapped by New when the metadata does not fit in MaxMetaSize bytes.
var ErrMetaTooLarge = errors.New("gossip metadata too large")

// Meta is what a member tells the others about itself.
type Meta struct {
	// Role is RoleWitness (empty) or RoleKeeper.
	Role string `json:"role,omitempty"`
	// ID is the witness's stable identity (its Raft server ID); empty for a keeper.
	ID string `json:"id"`
	// Region of the witness.
	Region string `json:"region"`
	// RaftAddr is where the witness's Raft transport listens; empty for a keeper.
	RaftAddr string `json:"raft"`
	// GRPCAddr and HTTPAddr are where its API (a keeper's: the Keeper API) and HTTP endpoints
	// listen.
	GRPCAddr string `json:"grpc"`
	HTTPAddr string `json:"http"`
	// HasState is true once the witness has Raft state (it bootstrapped or was added), so a
	// fresh witness seeing it must join rather than bootstrap.
	HasState bool `json:"has_state"`
	// Cluster and Node name a keeper's PostgreSQL server: the cluster and its spec node name.
	Cluster string `json:"cluster,omitempty"`
	Node    string `json:"node,omitempty"`
	// Leaving is spread just before a graceful Leave, so that the others can tell a member
	// that left from one that died (memberlist's leave event does not say which).
	Leaving bool `json:"leaving,omitempty"`
}

// IsWitness reports whether the member is a witness (a Raft member or a candidate for one).
func (m Meta) IsWitness() bool { return m.Role == RoleWitness }

// IsKeeper reports whether the member is a keeper.
func (m Meta) IsKeeper() bool { return m.Role == RoleKeeper }

// KeeperName is the gossip name of the keeper of node in cluster: keeper names must not
// collide with each other (the same node name in two clusters) nor with witness names.
func KeeperName(cluster, node string) string { return "keeper/" + cluster + "/" + node }

// Peer is a member as gossip currently sees it.
type Peer struct {
	Name string
	// State is alive, dead (its failure detector gave up on it) or left (it said goodbye).
	// memberlist sends no event when it merely suspects a member, so a suspected member
	// reads alive here until it is declared dead.
	State string
	// Since is when this member's State was first seen as it is now (this process's clock).
	Since time.Time
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
	if b, _ := json.Marshal(cfg.Meta); len(b) > MaxMetaSize {
		return nil, fmt.Errorf("%w: %d bytes of %s's metadata, memberlist allows %d; shorten the names and addresses it advertises",
			ErrMetaTooLarge, len(b), cfg.Name, MaxMetaSize)
	}
	if cfg.Meta.Role != RoleWitness && cfg.Meta.Role != RoleKeeper {
		return nil, fmt.Errorf("gossip role %q is not a witness's (empty) or %q", cfg.Meta.Role, RoleKeeper)
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

// Peers returns every witness gossip has heard of, this one included when it is a witness,
// sorted by name, with its last known state (alive, dead or left). Keepers are never in it:
// it is what Raft membership, bootstrap_expect and leader lookups are built from. It reads a
// copy kept from memberlist's events, because memberlist's own Members() hands out nodes it
// keeps mutating.
func (g *Gossip) Peers() []Peer { return g.members(Meta.IsWitness) }

// Keepers returns every keeper gossip has heard of, sorted by name, with its last known state.
// A keeper that was declared dead or left stays listed (with that state) until it comes back.
func (g *Gossip) Keepers() []Peer { return g.members(Meta.IsKeeper) }

func (g *Gossip) members(keep func(Meta) bool) []Peer {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]Peer, 0, len(g.peers))
	for _, p := range g.peers {
		if keep(p.Meta) {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// record copies a node's facts; memberlist calls the event delegate under its own lock.
// Changed is signalled only for witnesses: keepers coming and going must not wake the Raft
// membership machinery.
// The state comes from the kind of event, not from n.State: memberlist sets the state on its
// own record of the node, never on the Node it hands to the delegate (always StateAlive there).
func (g *Gossip) record(n *memberlist.Node, gone bool) {
	p := Peer{Name: n.Name, State: "alive", Addr: net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))}
	if err := json.Unmarshal(n.Meta, &p.Meta); err != nil {
		return // not a regent member, or a garbled record: ignore it
	}
	if gone {
		p.State = "dead"
		if p.Meta.Leaving {
			p.State = "left"
		}
	}
	if !p.Meta.IsWitness() && !p.Meta.IsKeeper() {
		return // a role this version does not know: never take it for a witness
	}
	now := time.Now()
	g.mu.Lock()
	p.Since = now
	if old, ok := g.peers[n.Name]; ok && old.State == p.State {
		p.Since = old.Since
	}
	g.peers[n.Name] = p
	g.mu.Unlock()
	if p.Meta.IsWitness() {
		g.notify()
	}
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

// Changed is signalled (non-blocking, coalesced) whenever a witness's membership or metadata
// changes (a keeper's never signals it).
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

// Leave announces departure and stops the member. When others are alive it first spreads
// Leaving in its metadata (for up to half of timeout), so that they record it as left rather
// than dead.
func (g *Gossip) Leave(timeout time.Duration) error {
	if g.list.NumMembers() > 1 {
		g.mu.Lock()
		g.meta.Leaving = true
		g.mu.Unlock()
		_ = g.list.UpdateNode(timeout / 2) // best effort: without it the others say dead
	}
	err := g.list.Leave(timeout)
	if serr := g.list.Shutdown(); err == nil {
		err = serr
	}
	return err
}

// Shutdown stops the member without announcing it, as a lost host would: the others declare it
// dead once their failure detector gives up on it.
func (g *Gossip) Shutdown() error { return g.list.Shutdown() }

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

func (e *events) NotifyJoin(n *memberlist.Node)   { (*Gossip)(e).record(n, false) }
func (e *events) NotifyLeave(n *memberlist.Node)  { (*Gossip)(e).record(n, true) }
func (e *events) NotifyUpdate(n *memberlist.Node) { (*Gossip)(e).record(n, false) }
