package keeper

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/regentdb/regent/fencing"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// The quorum lease, keeper side. fencing/lease.go has the arithmetic and the argument; this
// file only sends the rounds and keeps their results.
//
// Every RenewEvery(ttl) the keeper sends RenewLease to every witness at once (never to the
// leader only: a witness election must not cost the primary its lease). A round counts when
// a majority of the witnesses granted it, and the lease then runs to
// KeeperDeadline(send time of that round). All times here come from time.Now and so carry
// Go's monotonic reading: a wall-clock step does not move a deadline.

// Round outcomes, as counted in the metrics.
const (
	outcomeGranted  = "granted"   // a majority granted
	outcomeDenied   = "denied"    // a majority answered, fewer than a majority granted
	outcomeNoQuorum = "no_quorum" // fewer than a majority answered
)

// answer is one witness's reply to a renewal.
type answer struct {
	resp *regentv1.RenewLeaseResponse
	err  error
}

// tally is what one round's answers say.
type tally struct {
	// Answered and Granted count witnesses.
	Answered, Granted int
	// Epoch is the highest lease epoch any witness reported, Primary the primary the first
	// witness reporting it named.
	Epoch   uint64
	Primary string
	// Other is a primary other than this node that a witness named at an epoch at least the
	// one renewed (empty when none).
	Other string
	// TTL is the shortest cluster policy lease_ttl any witness reported (0: none did), and
	// Voters the most witnesses any of them counts.
	TTL    time.Duration
	Voters int
}

// tallyRound counts the answers to a renewal of epoch sent by node.
func tallyRound(node string, epoch uint64, answers []answer) tally {
	var t tally
	for _, a := range answers {
		if a.err != nil || a.resp == nil {
			continue
		}
		r := a.resp
		t.Answered++
		if r.GetGranted() {
			t.Granted++
		}
		if r.GetCurrentEpoch() > t.Epoch {
			t.Epoch, t.Primary = r.GetCurrentEpoch(), r.GetPrimary()
		}
		if r.GetPrimary() != "" && r.GetPrimary() != node && r.GetCurrentEpoch() >= epoch && t.Other == "" {
			t.Other = r.GetPrimary()
		}
		if ttl := time.Duration(r.GetLeaseTtlMs()) * time.Millisecond; ttl > 0 && (t.TTL == 0 || ttl < t.TTL) {
			t.TTL = ttl
		}
		t.Voters = max(t.Voters, int(r.GetVoters()))
	}
	return t
}

// outcome classifies a tally for the metrics, given the majority needed.
func (t tally) outcome(need int) string {
	switch {
	case t.Granted >= need:
		return outcomeGranted
	case t.Answered >= need:
		return outcomeDenied
	}
	return outcomeNoQuorum
}

// majority is how many of n witnesses make a majority.
func majority(n int) int { return n/2 + 1 }

// leaseState is the keeper's knowledge of its lease; Keeper.mu guards it.
type leaseState struct {
	// epoch is the epoch renewals are sent for (at least 1, the first epoch of a cluster).
	epoch uint64
	// grantSend is the send time of the last round a majority granted, for grantEpoch.
	grantSend  time.Time
	grantEpoch uint64
	// known: a majority of witnesses has answered at least once, so designated means
	// something. designated: the newest epoch seen names this node primary. primary and
	// seenEpoch are that newest epoch and its primary.
	known, designated bool
	primary           string
	seenEpoch         uint64
	// clean: the last finished round was granted by a majority and no witness in it named
	// another primary; only then may the keeper lift a lease fence.
	clean bool
}

// witnesses holds one gRPC connection per configured witness.
type witnesses struct {
	addrs   []string
	conns   []*grpc.ClientConn
	clients []regentv1.RegentClient
}

// dialWitnesses prepares a client per witness; connections are made lazily and retried with
// a short backoff, so a restarted witness counts again within a renewal or two.
func dialWitnesses(addrs []string, every time.Duration) (*witnesses, error) {
	w := &witnesses{addrs: addrs}
	bo := backoff.DefaultConfig
	bo.BaseDelay = 50 * time.Millisecond
	bo.MaxDelay = max(every, 200*time.Millisecond)
	for _, a := range addrs {
		conn, err := grpc.NewClient(a, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithConnectParams(grpc.ConnectParams{Backoff: bo, MinConnectTimeout: max(every, 200*time.Millisecond)}))
		if err != nil {
			w.Close()
			return nil, fmt.Errorf("witness %s: %w; fix the witnesses list", a, err)
		}
		w.conns = append(w.conns, conn)
		w.clients = append(w.clients, regentv1.NewRegentClient(conn))
	}
	return w, nil
}

// Close closes every connection.
func (w *witnesses) Close() {
	for _, c := range w.conns {
		c.Close()
	}
}

// ttl returns the lease the keeper works with: its own lease_ttl, or the cluster policy's
// when that is shorter (the leader waits out the policy's, so the keeper must not hold longer).
func (k *Keeper) ttl() time.Duration {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.ttlLocked()
}

func (k *Keeper) ttlLocked() time.Duration {
	if k.policyTTL > 0 && k.policyTTL < k.cfg.LeaseTTL.Duration {
		return k.policyTTL
	}
	return k.cfg.LeaseTTL.Duration
}

// need is the number of grants that make a majority: of the configured witnesses, or of the
// witness cluster's members when it has more (a lease granted by a minority of the real
// witnesses would not intersect the leader's revocation majority).
func (k *Keeper) needLocked() int {
	return majority(max(len(k.cfg.Witnesses), k.members))
}

// deadlineLocked is the keeper-clock time by which the keeper must have fenced, from the last
// granted round; the zero time when no round was ever granted.
func (k *Keeper) deadlineLocked() time.Time {
	if k.lease.grantSend.IsZero() {
		return time.Time{}
	}
	return fencing.KeeperDeadline(k.lease.grantSend, k.ttlLocked(), k.cfg.LeaseDrift, k.cfg.FenceMargin.Duration)
}

// holdsLeaseLocked reports whether a granted round still covers now.
func (k *Keeper) holdsLeaseLocked(now time.Time) bool {
	dl := k.deadlineLocked()
	return !dl.IsZero() && now.Before(dl)
}

// obligationLocked is when the server, if it takes writes, must be fenced: the lease deadline,
// or — for a server that was last seen in recovery and has never held a lease since — the same
// arithmetic from the moment it was last seen in recovery (it cannot have been promoted
// before then, and the leader revokes its epoch only after promoting it). Zero: at once.
func (k *Keeper) obligationLocked() time.Time {
	start := k.lease.grantSend
	if k.lastInRecovery.After(start) {
		start = k.lastInRecovery
	}
	if start.IsZero() {
		return time.Time{}
	}
	return fencing.KeeperDeadline(start, k.ttlLocked(), k.cfg.LeaseDrift, k.cfg.FenceMargin.Duration)
}

// renewLoop sends a round every RenewEvery(ttl) until ctx ends. When a round teaches the
// keeper a newer epoch naming it primary, the next round goes out at once.
func (k *Keeper) renewLoop(ctx context.Context) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		sent := time.Now()
		again := k.round(ctx, sent)
		if ctx.Err() != nil {
			return
		}
		wait := time.Until(sent.Add(fencing.RenewEvery(k.ttl())))
		if again {
			wait = 0
		}
		t.Reset(max(wait, 0))
	}
}

// round sends one renewal to every witness and records what came back. A majority grant is
// recorded the moment it is reached, not when the slowest witness answers. It reports
// whether another round should go out at once (a newer epoch naming this node was learned).
func (k *Keeper) round(ctx context.Context, sent time.Time) (again bool) {
	k.mu.Lock()
	epoch := k.lease.epoch
	need := k.needLocked()
	every := fencing.RenewEvery(k.ttlLocked())
	k.mu.Unlock()

	req := &regentv1.RenewLeaseRequest{Cluster: k.cfg.Cluster, Node: k.cfg.NodeName, Epoch: epoch}
	ch := make(chan answer, len(k.wit.clients))
	for _, c := range k.wit.clients {
		go func() {
			cctx, cancel := context.WithTimeout(ctx, every)
			defer cancel()
			resp, err := c.RenewLease(cctx, req)
			ch <- answer{resp, err}
		}()
	}
	answers := make([]answer, 0, len(k.wit.clients))
	recorded := false
	for range k.wit.clients {
		a := <-ch
		answers = append(answers, a)
		if a.err != nil {
			k.log.Debug("lease renewal failed", "epoch", epoch, "err", a.err)
		} else if !a.resp.GetGranted() {
			k.log.Debug("lease renewal refused", "epoch", epoch, "witness", a.resp.GetWitness(), "reason", a.resp.GetReason())
		}
		if t := tallyRound(k.cfg.NodeName, epoch, answers); !recorded && t.Granted >= need {
			recorded = true
			k.mu.Lock()
			if sent.After(k.lease.grantSend) {
				k.lease.grantSend, k.lease.grantEpoch = sent, epoch
			}
			k.mu.Unlock()
			k.poke()
		}
	}
	t := tallyRound(k.cfg.NodeName, epoch, answers)
	outcome := t.outcome(need)
	k.metrics.rounds.WithLabelValues(outcome).Inc()

	k.learnPolicy(t)

	k.mu.Lock()
	wasClean := k.lease.clean
	k.lease.clean = t.Granted >= need && t.Other == ""
	if t.Answered >= need {
		k.lease.known = true
	}
	if t.Epoch > 0 && t.Epoch >= k.lease.seenEpoch {
		k.lease.seenEpoch, k.lease.primary = t.Epoch, t.Primary
	}
	if t.Answered > 0 {
		k.lease.designated = k.lease.primary == k.cfg.NodeName && t.Other == ""
	}
	var learned uint64
	if k.lease.designated && k.lease.seenEpoch > k.lease.epoch {
		k.log.Info("the witnesses name this node primary at a newer lease epoch", "epoch", k.lease.seenEpoch, "was", k.lease.epoch)
		k.lease.epoch = k.lease.seenEpoch
		learned, again = k.lease.epoch, true
	}
	if k.lease.clean != wasClean || again || outcome != outcomeGranted {
		k.poke()
	}
	if !k.designationKnown && (k.lease.known && !again || time.Since(k.started) > 2*k.ttlLocked()) {
		k.designationKnown = true
		close(k.designationCh)
	}
	k.mu.Unlock()
	if learned > 0 {
		k.persistEpoch(learned)
	}
	return again
}

// persistEpoch records the learned epoch, so a restarted keeper renews it at once.
func (k *Keeper) persistEpoch(epoch uint64) {
	if err := k.state.Update(func(s *State) {
		if epoch > s.LeaseEpoch {
			s.LeaseEpoch = epoch
		}
	}); err != nil {
		k.log.Warn("could not record the lease epoch", "epoch", epoch, "err", err)
	}
}

// learnPolicy takes the cluster policy's lease_ttl and the number of witnesses from a round's
// answers (every renewal carries them), so the keeper never holds a longer lease than the
// leader waits out, nor counts a majority of fewer witnesses than the leader revokes at.
func (k *Keeper) learnPolicy(t tally) {
	if t.TTL == 0 && t.Voters == 0 {
		return // nobody answered (or an old witness): keep what was learned
	}
	k.mu.Lock()
	ttl, members := k.policyTTL, k.members
	if t.TTL > 0 {
		ttl = t.TTL
	}
	if t.Voters > 0 {
		members = t.Voters
	}
	changed := ttl != k.policyTTL || members != k.members
	k.policyTTL, k.members = ttl, members
	eff := k.ttlLocked()
	k.mu.Unlock()
	if !changed {
		return
	}
	if ttl > 0 && ttl < k.cfg.LeaseTTL.Duration {
		k.log.Warn("the cluster policy's lease_ttl is shorter than this keeper's: using it", "policy_lease_ttl", ttl, "lease_ttl", k.cfg.LeaseTTL.Duration)
		if err := fencing.CheckLease(eff, k.cfg.LeaseDrift, k.cfg.FenceMargin.Duration); err != nil {
			k.log.Error("the effective lease is too short for this keeper's fence margin; the lease will lapse between renewals — raise the policy's lease_ttl or lower fence_margin", "err", err)
		}
	}
	if members > len(k.cfg.Witnesses) {
		k.log.Error("the witness cluster has more members than this keeper's witnesses list; a lease now needs a majority of all of them — list every witness", "members", members, "configured", len(k.cfg.Witnesses))
	}
}
