package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/regentdb/regent/internal/atomicfile"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// leaseStore is this witness's durable record of the lease epochs it revoked, per cluster.
// It is local on purpose: the lease must keep working while the witnesses elect a leader, and
// a revocation must survive a restart of the witness (a restarted witness must not grant the
// revoked epoch again), so it is written to disk before the revocation is acknowledged.
type leaseStore struct {
	mu      sync.Mutex
	path    string
	revoked map[string]uint64 // cluster → highest revoked epoch (every epoch up to it is revoked)
}

func openLeaseStore(dir string) (*leaseStore, error) {
	s := &leaseStore{path: filepath.Join(dir, "leases.json"), revoked: map[string]uint64{}}
	b, err := os.ReadFile(s.path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return s, nil
	case err != nil:
		return nil, fmt.Errorf("read revoked lease epochs: %w", err)
	}
	if err := json.Unmarshal(b, &s.revoked); err != nil {
		// Refuse to start rather than forget a revocation: granting a revoked epoch again
		// could let a fenced primary keep writing.
		return nil, fmt.Errorf("%s is corrupt (%v): restore it, or remove it only if every old primary is certainly stopped", s.path, err)
	}
	return s, nil
}

// Revoked returns the highest revoked epoch of a cluster (0: none).
func (s *leaseStore) Revoked(cluster string) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.revoked[cluster]
}

// Revoke records that every epoch up to epoch of cluster is revoked, durably, before returning.
func (s *leaseStore) Revoke(cluster string, epoch uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.revoked[cluster] >= epoch {
		return nil
	}
	next := make(map[string]uint64, len(s.revoked)+1)
	for k, v := range s.revoked {
		next[k] = v
	}
	next[cluster] = epoch
	b, err := json.Marshal(next)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(s.path, b, 0o600); err != nil {
		return fmt.Errorf("record revoked lease epoch %d of %s: %w", epoch, cluster, err)
	}
	s.revoked = next
	return nil
}

// renewLease answers a keeper's renewal from this witness's own state: granted unless the
// epoch is revoked here, or this witness knows a newer epoch or another primary.
func (a *Agent) renewLease(req *regentv1.RenewLeaseRequest) *regentv1.RenewLeaseResponse {
	resp := &regentv1.RenewLeaseResponse{Witness: a.cfg.NodeName}
	c, ok := a.fsm.Cluster(req.GetCluster())
	if !ok {
		resp.Reason = fmt.Sprintf("cluster %q is unknown to this witness", req.GetCluster())
		return resp
	}
	resp.CurrentEpoch, resp.Primary = c.GetLeaseEpoch(), c.GetPrimary()
	// Once a failover is past its fence, the old lease is over and the candidate is about to
	// be promoted: its keeper may take the next epoch now, so that a slow promotion is not
	// fenced by the candidate's own keeper before the promoted step commits.
	if ev := a.promoting(c.GetName()); ev != nil {
		resp.CurrentEpoch, resp.Primary = c.GetLeaseEpoch()+1, ev.GetToNode()
	}
	switch {
	case req.GetEpoch() <= a.leases.Revoked(req.GetCluster()):
		resp.Reason = fmt.Sprintf("epoch %d is revoked", req.GetEpoch())
	case req.GetNode() != resp.GetPrimary():
		resp.Reason = fmt.Sprintf("%s is not the primary (%s is, epoch %d)", req.GetNode(), resp.GetPrimary(), resp.GetCurrentEpoch())
	case req.GetEpoch() != resp.GetCurrentEpoch():
		resp.Reason = fmt.Sprintf("epoch %d is not the current epoch %d", req.GetEpoch(), resp.GetCurrentEpoch())
	default:
		resp.Granted = true
	}
	return resp
}

// promoting returns the cluster's open failover when it is past the fence and not yet
// promoted (step FENCED), else nil.
func (a *Agent) promoting(cluster string) *regentv1.FailoverEvent {
	if ev, ok := a.fsm.OpenFailover(cluster); ok && ev.GetStep() == regentv1.FailoverStep_FAILOVER_STEP_FENCED {
		return ev
	}
	return nil
}

func (a *Agent) revokeLease(req *regentv1.RevokeLeaseRequest) error {
	if err := a.leases.Revoke(req.GetCluster(), req.GetEpoch()); err != nil {
		return err
	}
	a.logger.Info("lease epoch revoked", "cluster", req.GetCluster(), "epoch", req.GetEpoch(), "term", req.GetTerm(), "event", req.GetEventId())
	return nil
}

// revokeAtMajority asks every witness to revoke the cluster's current lease epoch and returns
// the local time of the acknowledgement that completed a majority; it keeps trying the others
// until ctx ends or a majority has acknowledged.
func (a *Agent) revokeAtMajority(ctx context.Context, c *regentv1.Cluster, ev *regentv1.FailoverEvent) (time.Time, error) {
	members := a.fsm.Members()
	need := len(members)/2 + 1
	req := &regentv1.RevokeLeaseRequest{Cluster: c.GetName(), Epoch: c.GetLeaseEpoch(), Term: ev.GetTerm(), EventId: ev.GetId()}
	type ack struct {
		at  time.Time
		err error
	}
	acks := make(chan ack, len(members))
	for _, m := range members {
		go func() {
			if m.GetName() == a.cfg.NodeName {
				err := a.revokeLease(req)
				acks <- ack{time.Now(), err}
				return
			}
			conn, err := grpc.NewClient(m.GetGrpcAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				acks <- ack{err: err}
				return
			}
			defer conn.Close()
			for {
				_, err = regentv1.NewRegentClient(conn).RevokeLease(ctx, req)
				if err == nil || ctx.Err() != nil {
					acks <- ack{time.Now(), err}
					return
				}
				select {
				case <-ctx.Done():
				case <-time.After(100 * time.Millisecond):
				}
			}
		}()
	}
	got := 0
	var errs []error
	for range members {
		select {
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("revoke lease epoch %d of %s: %d of %d witnesses acknowledged, %d needed: %w", req.GetEpoch(), c.GetName(), got, len(members), need, ctx.Err())
		case r := <-acks:
			if r.err != nil {
				errs = append(errs, r.err)
				continue
			}
			got++
			if got == need {
				return r.at, nil
			}
		}
	}
	return time.Time{}, fmt.Errorf("revoke lease epoch %d of %s: only %d of %d witnesses acknowledged: %w", req.GetEpoch(), c.GetName(), got, len(members), errors.Join(errs...))
}
