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
