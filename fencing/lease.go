package fencing

import (
	"fmt"
	"time"
)

// Lease arithmetic for the primary's quorum lease (the keeper holds it, the witnesses grant it).
//
// The primary's keeper sends a renewal for its lease epoch to every witness each ttl/4; a
// witness grants unless it has revoked that epoch (durably). The keeper's lease runs from the
// SEND time of the last round a majority granted: it may keep taking writes until
//
//	KeeperDeadline = lastGrantedSend + ttl·(1 − drift) − margin   (keeper's monotonic clock)
//
// and fences itself before then. To fence a primary it cannot reach, the leader has a majority
// of witnesses revoke the epoch and, from the last revocation acknowledgement it received, waits
//
//	RevocationSafeAfter = lastAck + ttl·(1 + drift)                 (leader's clock)
//
// Why that is enough: the last round the keeper saw granted was granted by a majority M1, the
// revocation acknowledged by a majority M2. They share a witness w, which granted that round
// before it revoked (after revoking it grants nothing for the epoch), so the round was sent
// before w revoked, which was before the leader's last acknowledgement: lastGrantedSend ≤ lastAck
// in real time. Clocks may be offset arbitrarily but run at a rate within [1−drift, 1+drift] of
// real time. The keeper fences within ttl·(1−drift) of its own clock, i.e. within ttl real
// seconds of lastGrantedSend; the leader waits ttl·(1+drift) of its clock, i.e. at least ttl real
// seconds after lastAck ≥ lastGrantedSend. So when the leader stops waiting the keeper has
// fenced (margin covers the time the local fence itself takes). TestLeaseNeverOverlaps checks
// the argument with random clocks, delays and drifts.
//
// # A shorter wait: counting from the revokers' last grants
//
// lastAck is a late stand-in for lastGrantedSend: when the keeper died long before the leader
// revoked (a host lost at T0, a failover decided down_after later), the old lease ran out long
// ago and the full wait from lastAck is time lost. So each witness remembers, in memory and on
// its monotonic clock, when it last granted a renewal of each (cluster, epoch), and answers a
// revocation with sinceLastGrant: how long before the revocation (its clock) that was, or 0 when
// it does not know (it restarted since, or never granted). The leader then waits until
//
//	RevocationSafeAfterGrants = max over the revoking majority M2 of
//	                              (ack_i − since_i·(1 − drift)/(1 + drift)) + ttl·(1 + drift)
//
// Why: the witness w in M1 ∩ M2 granted the keeper's last counted round, so that round was sent
// no later than that grant, which was no later than w's last grant g_w. w revoked at r_w, no
// later than the leader received its acknowledgement a_w, and w's clock measured since_w over
// the real interval r_w − g_w, so r_w − g_w ≥ since_w/(1 + drift) real seconds:
//
//	lastGrantedSend ≤ g_w ≤ a_w − since_w/(1 + drift)   (real time)
//
// The leader subtracts x_w = since_w·(1 − drift)/(1 + drift) on its own clock from its reading
// of a_w; on a clock running at rate ≥ 1 − drift that is at most x_w/(1 − drift) =
// since_w/(1 + drift) real seconds, so the leader-clock point ack_w − x_w is, in real time, at
// or after lastGrantedSend, and the ttl·(1 + drift) wait from there covers the keeper's lease
// exactly as above. The leader does not know which revoker is w, so it takes the latest such
// point over every revoker it counted: that is at or after w's. A witness that answers 0
// contributes its acknowledgement itself (the old rule), so an unknowing witness costs time,
// never safety. Note the factor: (1 − drift)/(1 + drift), not (1 − drift) — the witness's clock
// may run fast (its since overstates the real interval) while the leader's runs slow (its
// subtraction understates it); TestLeaseNeverOverlaps drives both to the bound.
//
// The keeper's grant is recorded by the witness under the same lock as its revocation check, so
// a grant and a revocation of one epoch are ordered at that witness and g_w ≤ r_w holds.

// DefaultDrift is the clock rate error regent assumes between any two hosts (±5%: far beyond
// what NTP-disciplined or even free-running quartz clocks do over a few seconds).
const DefaultDrift = 0.05

// KeeperDeadline is the keeper-clock time by which the keeper must have fenced itself, given
// the send time of the last renewal round a majority granted.
func KeeperDeadline(lastGrantedSend time.Time, ttl time.Duration, drift float64, margin time.Duration) time.Time {
	return lastGrantedSend.Add(time.Duration(float64(ttl)*(1-drift)) - margin)
}

// RevocationSafeAfter is the leader-clock time after which an old lease has surely ended,
// given the last revocation acknowledgement of a majority of witnesses.
func RevocationSafeAfter(lastAck time.Time, ttl time.Duration, drift float64) time.Time {
	return lastAck.Add(time.Duration(float64(ttl) * (1 + drift)))
}

// RevocationAck is one witness's acknowledgement of a lease revocation: when the leader
// received it (its clock) and how long before revoking the witness last granted the epoch
// (the witness's clock; 0 when unknown).
type RevocationAck struct {
	At             time.Time
	SinceLastGrant time.Duration
}

// GrantBound is the leader-clock time no earlier (in real time) than the send time of any
// renewal round a majority granted, given the acknowledgements of a majority of witnesses that
// revoked the epoch: max of At − SinceLastGrant·(1 − drift)/(1 + drift). RevocationSafeAfter of
// it is when the old lease has surely ended (see the argument above). A negative
// SinceLastGrant counts as 0. It returns the zero time for no acknowledgements.
func GrantBound(acks []RevocationAck, drift float64) time.Time {
	var bound time.Time
	for _, a := range acks {
		since := max(a.SinceLastGrant, 0)
		p := a.At.Add(-time.Duration(float64(since) * (1 - drift) / (1 + drift)))
		if bound.IsZero() || p.After(bound) {
			bound = p
		}
	}
	return bound
}

// RevocationSafeAfterGrants is RevocationSafeAfter counted from GrantBound(acks, drift) instead
// of the last acknowledgement: never later, and much earlier when the keeper stopped renewing
// long before the revocation.
func RevocationSafeAfterGrants(acks []RevocationAck, ttl time.Duration, drift float64) time.Time {
	return RevocationSafeAfter(GrantBound(acks, drift), ttl, drift)
}

// RenewEvery is how often the keeper sends renewals: a quarter of the lease, so three rounds
// may fail before the lease is in danger.
func RenewEvery(ttl time.Duration) time.Duration { return ttl / 4 }

// CheckLease validates lease settings: the margin must leave the keeper some lease.
func CheckLease(ttl time.Duration, drift float64, margin time.Duration) error {
	switch {
	case ttl <= 0:
		return fmt.Errorf("lease_ttl %v must be positive", ttl)
	case drift < 0 || drift >= 0.5:
		return fmt.Errorf("clock drift %v must be in [0, 0.5)", drift)
	case margin < 0 || time.Duration(float64(ttl)*(1-drift)) <= margin+RenewEvery(ttl):
		return fmt.Errorf("lease_ttl %v is too short for a fence margin of %v: the lease would lapse before the next renewal; raise lease_ttl", ttl, margin)
	}
	return nil
}
