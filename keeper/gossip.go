package keeper

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/regentdb/regent/gossip"
)

// Gossip timings of the keeper's join loop.
const (
	gossipJoinFirst = 200 * time.Millisecond // first retry after a failed join
	gossipJoinMax   = 10 * time.Second       // longest wait between failed joins
	gossipCheck     = 5 * time.Second        // how often a joined keeper checks it still sees a witness
)

// startGossip creates the keeper's memberlist member with its keeper metadata (it does not join
// yet: gossipLoop does, in the background). Without gossip_addr it does nothing. The addresses
// advertised are the bound ones, with an unspecified listen host replaced by the gossip host.
func (k *Keeper) startGossip() error {
	if k.cfg.GossipAddr == "" {
		return nil
	}
	host, _, err := net.SplitHostPort(k.cfg.GossipAddr)
	if err != nil {
		return fmt.Errorf("gossip_addr %q: %w", k.cfg.GossipAddr, err)
	}
	advertise := func(l net.Listener) string {
		h, p, err := net.SplitHostPort(l.Addr().String())
		if err != nil {
			return l.Addr().String()
		}
		if ip := net.ParseIP(h); ip != nil && ip.IsUnspecified() {
			h = host
		}
		return net.JoinHostPort(h, p)
	}
	g, err := gossip.New(gossip.Config{
		Name:     gossip.KeeperName(k.cfg.Cluster, k.cfg.NodeName),
		BindAddr: k.cfg.GossipAddr,
		Logger:   k.log,
		Meta: gossip.Meta{Role: gossip.RoleKeeper, Cluster: k.cfg.Cluster, Node: k.cfg.NodeName,
			GRPCAddr: advertise(k.grpcLis), HTTPAddr: advertise(k.httpLis)},
	})
	if err != nil {
		return fmt.Errorf("gossip_addr %s: %w; choose a free address (TCP and UDP), or remove gossip_addr and join to run without gossip", k.cfg.GossipAddr, err)
	}
	k.gossip = g
	return nil
}

// gossipLoop joins the witnesses' gossip through join, retrying with backoff until a witness
// answers, and joins again whenever the keeper sees no witness alive (all of them restarted
// while it was cut off, say, and forgot it). Gossip is not on the lease's path: the keeper
// renews, fences and obeys whether or not this ever succeeds.
func (k *Keeper) gossipLoop(ctx context.Context) {
	backoff := gossipJoinFirst
	failing := false
	for {
		wait := gossipCheck
		if !k.gossipSeesWitness() {
			n, err := k.joinGossip(ctx)
			switch {
			case err == nil && n > 0:
				k.log.Info("joined the witnesses' gossip", "contacted", n)
				backoff, failing = gossipJoinFirst, false
			case !failing:
				k.log.Warn("cannot join the witnesses' gossip yet; retrying in the background (the lease does not depend on it)",
					"join", k.cfg.Join, "err", err)
				failing = true
				fallthrough
			default:
				k.log.Debug("gossip join failed; retrying", "join", k.cfg.Join, "err", err, "in", backoff)
				wait = backoff
				backoff = min(2*backoff, gossipJoinMax)
			}
		} else {
			backoff, failing = gossipJoinFirst, false
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// gossipSeesWitness reports whether gossip knows an alive witness.
func (k *Keeper) gossipSeesWitness() bool {
	for _, p := range k.gossip.Peers() {
		if p.State == "alive" {
			return true
		}
	}
	return false
}

// joinGossip contacts the join addresses one by one, stopping early once ctx ends (a keeper that
// is shutting down or killed must not announce itself again).
func (k *Keeper) joinGossip(ctx context.Context) (int, error) {
	var errs []error
	joined := 0
	for _, addr := range k.cfg.Join {
		if ctx.Err() != nil {
			return joined, ctx.Err()
		}
		n, err := k.gossip.Join([]string{addr})
		joined += n
		if err != nil {
			errs = append(errs, err)
		}
	}
	if joined > 0 {
		return joined, nil
	}
	return 0, errors.Join(errs...)
}

// leaveGossip ends the join loop (waiting a little for a join in flight) and leaves gossip
// gracefully, so that the witnesses list the keeper as left rather than dead.
func (k *Keeper) leaveGossip() {
	if k.gossip == nil {
		return
	}
	select {
	case <-k.gossipDone:
	case <-time.After(2 * time.Second):
		k.log.Warn("a gossip join is still in flight; leaving anyway")
	}
	if err := k.gossip.Leave(2 * time.Second); err != nil {
		k.log.Warn("leaving gossip (the witnesses will list this keeper as dead, not left)", "err", err)
	}
}
