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

	"github.com/regentdb/regent/fencing"
	"github.com/regentdb/regent/internal/atomicfile"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
	"github.com/regentdb/regent/spec"
)

// leaseStore is this witness's durable record of the lease epochs it revoked, per cluster.
// It is local on purpose: the lease must keep working while the witnesses elect a leader, and
// a revocation must survive a restart of the witness (a restarted witness must not grant the
// revoked epoch again), so it is written to disk before the revocation is acknowledged.
//
// It also remembers, in memory only, when it last granted each (cluster, epoch), by the
// monotonic clock: a revocation answers how long before it that was, which lets the leader
// shorten its wait (fencing.GrantBound). After a restart nothing is remembered and the answer
// is 0, "unknown", which is always safe.
type leaseStore struct {
	mu      sync.Mutex
	path    string
	revoked map[string]uint64 // cluster → highest revoked epoch (every epoch up to it is revoked)
	granted map[grantKey]time.Time
	// early holds the revocations the leader's fence step started alongside its fence
	// methods, by failover event id, for RevokeLease to take up (world.go).
	early map[uint64]*revocation
}

// grantKey names one lease epoch of one cluster.
type grantKey struct {
	cluster string
	epoch   uint64
}

func openLeaseStore(dir string) (*leaseStore, error) {
	s := &leaseStore{path: filepath.Join(dir, "leases.json"), revoked: map[string]uint64{}, granted: map[grantKey]time.Time{},
		early: map[uint64]*revocation{}}
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

// Grant records a grant of epoch of cluster now, unless that epoch is revoked; it reports
// whether it granted. The check and the record share the lock Revoke takes, so at this witness
// every grant of an epoch precedes its revocation.
func (s *leaseStore) Grant(cluster string, epoch uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if epoch <= s.revoked[cluster] {
		return false
	}
	k := grantKey{cluster, epoch}
	if _, ok := s.granted[k]; !ok {
		// Forget the grants of revoked epochs of this cluster: they can never be granted
		// again, and a revocation asks about the newest grant only (see Revoke).
		for old := range s.granted {
			if old.cluster == cluster && old.epoch <= s.revoked[cluster] {
				delete(s.granted, old)
			}
		}
	}
	s.granted[k] = time.Now()
	return true
}

// Revoke records that every epoch up to epoch of cluster is revoked, durably, before returning.
// It returns how long ago this witness last granted any of those epochs (0 when it never did
// since it started: it cannot know what it granted before).
func (s *leaseStore) Revoke(cluster string, epoch uint64) (time.Duration, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var last time.Time
	for k, at := range s.granted {
		if k.cluster == cluster && k.epoch <= epoch && at.After(last) {
			last = at
		}
	}
	since := time.Duration(0)
	if !last.IsZero() {
		since = time.Since(last)
	}
	if s.revoked[cluster] >= epoch {
		return since, nil
	}
	next := make(map[string]uint64, len(s.revoked)+1)
	for k, v := range s.revoked {
		next[k] = v
	}
	next[cluster] = epoch
	b, err := json.Marshal(next)
	if err != nil {
		return 0, err
	}
	if err := atomicfile.Write(s.path, b, 0o600); err != nil {
		return 0, fmt.Errorf("record revoked lease epoch %d of %s: %w", epoch, cluster, err)
	}
	s.revoked = next
	// Measured when the revocation takes effect (the file is written): a grant can no
	// longer follow, and the leader's acknowledgement comes later still.
	if !last.IsZero() {
		since = time.Since(last)
	}
	return since, nil
}

// renewLease answers a keeper's renewal from this witness's own state: granted unless the
// epoch is revoked here, or this witness knows a newer epoch or another primary.
func (a *Agent) renewLease(req *regentv1.RenewLeaseRequest) *regentv1.RenewLeaseResponse {
	resp := &regentv1.RenewLeaseResponse{Witness: a.cfg.NodeName, Voters: uint32(len(a.fsm.Members()))}
	c, ok := a.fsm.Cluster(req.GetCluster())
	if !ok {
		resp.Reason = fmt.Sprintf("cluster %q is unknown to this witness", req.GetCluster())
		return resp
	}
	resp.CurrentEpoch, resp.Primary = c.GetLeaseEpoch(), c.GetPrimary()
	resp.LeaseTtlMs = spec.WithDefaults(c.GetPolicy()).GetLeaseTtlMs()
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
	case !a.leases.Grant(req.GetCluster(), req.GetEpoch()):
		// Revoked between the check above and now.
		resp.Reason = fmt.Sprintf("epoch %d is revoked", req.GetEpoch())
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

func (a *Agent) revokeLease(req *regentv1.RevokeLeaseRequest) (*regentv1.RevokeLeaseResponse, error) {
	since, err := a.leases.Revoke(req.GetCluster(), req.GetEpoch())
	if err != nil {
		return nil, err
	}
	a.logger.Info("lease epoch revoked", "cluster", req.GetCluster(), "epoch", req.GetEpoch(), "term", req.GetTerm(), "event", req.GetEventId(),
		"since_last_grant", since)
	return &regentv1.RevokeLeaseResponse{Witness: a.cfg.NodeName, SinceLastGrantMs: since.Milliseconds()}, nil
}

// revokeAtMajority asks every witness to revoke the cluster's current lease epoch and returns
// the acknowledgements of the first majority to answer (local receive time and each witness's
// since_last_grant); it keeps trying the others until ctx ends or a majority has acknowledged.
// fencing.GrantBound of them is where the leader's wait may count from.
func (a *Agent) revokeAtMajority(ctx context.Context, c *regentv1.Cluster, ev *regentv1.FailoverEvent) ([]fencing.RevocationAck, error) {
	members := a.fsm.Members()
	need := len(members)/2 + 1
	req := &regentv1.RevokeLeaseRequest{Cluster: c.GetName(), Epoch: c.GetLeaseEpoch(), Term: ev.GetTerm(), EventId: ev.GetId()}
	type ack struct {
		at    time.Time
		since time.Duration
		err   error
	}
	acks := make(chan ack, len(members))
	for _, m := range members {
		go func() {
			if m.GetName() == a.cfg.NodeName {
				resp, err := a.revokeLease(req)
				acks <- ack{time.Now(), time.Duration(resp.GetSinceLastGrantMs()) * time.Millisecond, err}
				return
			}
			conn, err := grpc.NewClient(m.GetGrpcAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				acks <- ack{err: err}
				return
			}
			defer conn.Close()
			for {
				resp, err := regentv1.NewRegentClient(conn).RevokeLease(ctx, req)
				if err == nil || ctx.Err() != nil {
					acks <- ack{time.Now(), time.Duration(resp.GetSinceLastGrantMs()) * time.Millisecond, err}
					return
				}
				select {
				case <-ctx.Done():
				case <-time.After(100 * time.Millisecond):
				}
			}
		}()
	}
	var got []fencing.RevocationAck
	var errs []error
	for range members {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("revoke lease epoch %d of %s: %d of %d witnesses acknowledged, %d needed: %w", req.GetEpoch(), c.GetName(), len(got), len(members), need, ctx.Err())
		case r := <-acks:
			if r.err != nil {
				errs = append(errs, r.err)
				continue
			}
			got = append(got, fencing.RevocationAck{At: r.at, SinceLastGrant: r.since})
			if len(got) == need {
				return got, nil
			}
		}
	}
	return nil, fmt.Errorf("revoke lease epoch %d of %s: only %d of %d witnesses acknowledged: %w", req.GetEpoch(), c.GetName(), len(got), len(members), errors.Join(errs...))
}

// revocation is a revocation of one lease epoch at a majority, run in the background.
type revocation struct {
	epoch uint64
	done  chan struct{} // closed when acks and err are set
	acks  []fencing.RevocationAck
	err   error
}

// earlyRevokeTimeout bounds a background revocation; past it RevokeLease revokes afresh.
const earlyRevokeTimeout = 30 * time.Second

// startRevocation revokes the cluster's current lease epoch at a majority in the background
// for failover event ev, and keeps it for takeRevocation.
func (a *Agent) startRevocation(ctx context.Context, c *regentv1.Cluster, ev *regentv1.FailoverEvent) *revocation {
	r := &revocation{epoch: c.GetLeaseEpoch(), done: make(chan struct{})}
	a.leases.mu.Lock()
	a.leases.early[ev.GetId()] = r
	a.leases.mu.Unlock()
	go func() {
		rctx, cancel := context.WithTimeout(ctx, earlyRevokeTimeout)
		defer cancel()
		r.acks, r.err = a.revokeAtMajority(rctx, c, ev)
		close(r.done)
	}()
	return r
}

// takeRevocation removes and returns the background revocation of event id, if it revoked
// epoch (nil otherwise).
func (a *Agent) takeRevocation(id, epoch uint64) *revocation {
	a.leases.mu.Lock()
	defer a.leases.mu.Unlock()
	r := a.leases.early[id]
	delete(a.leases.early, id)
	if r == nil || r.epoch != epoch {
		return nil
	}
	return r
}
