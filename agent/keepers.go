package agent

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// keeperCall dials the keeper beside node n (its spec's keeper_addr) and runs fn with a
// client; a node without a keeper is an error the caller can tell apart with hasKeeper.
func keeperCall[T any](ctx context.Context, n *regentv1.NodeSpec, fn func(context.Context, regentv1.KeeperClient) (T, error)) (T, error) {
	var zero T
	addr := n.GetKeeperAddr()
	if addr == "" {
		return zero, fmt.Errorf("node %s has no keeper_addr in the cluster spec", n.GetName())
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return zero, fmt.Errorf("keeper of %s at %s: %w", n.GetName(), addr, err)
	}
	defer conn.Close()
	out, err := fn(ctx, regentv1.NewKeeperClient(conn))
	if err != nil {
		return zero, fmt.Errorf("keeper of %s at %s: %w", n.GetName(), addr, err)
	}
	return out, nil
}

// hasKeeper reports whether a keeper runs beside n.
func hasKeeper(n *regentv1.NodeSpec) bool { return n.GetKeeperAddr() != "" }

// instructKeeper sends the leader's instruction to the keeper of node n of cluster c with the
// fencing token (term, event). upstream is the node to follow (DEMOTE, REJOIN), else nil. A
// keeper that refuses (stale token) or fails answers a gRPC error, returned wrapped.
func instructKeeper(ctx context.Context, c *regentv1.Cluster, n *regentv1.NodeSpec, action regentv1.KeeperAction,
	term, eventID uint64, upstream *regentv1.NodeSpec) (*regentv1.InstructResponse, error) {
	req := &regentv1.InstructRequest{
		Token:   &regentv1.FencingToken{Term: term, EventId: eventID},
		Action:  action,
		Cluster: c.GetName(),
		Node:    n.GetName(),
	}
	if upstream != nil {
		req.UpstreamHost, req.UpstreamPort = upstream.GetHost(), upstream.GetPort()
	}
	return keeperCall(ctx, n, func(ctx context.Context, k regentv1.KeeperClient) (*regentv1.InstructResponse, error) {
		return k.Instruct(ctx, req)
	})
}

// keeperStatus asks the keeper of node n for its local facts.
func keeperStatus(ctx context.Context, n *regentv1.NodeSpec) (*regentv1.KeeperStatusResponse, error) {
	return keeperCall(ctx, n, func(ctx context.Context, k regentv1.KeeperClient) (*regentv1.KeeperStatusResponse, error) {
		return k.KeeperStatus(ctx, &regentv1.KeeperStatusRequest{})
	})
}
