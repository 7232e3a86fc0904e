package fencing

import (
	"cmp"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// clock maps real time to a host's clock reading: offset + rate·real.
type clock struct {
	offset time.Duration
	rate   float64
}

func (c clock) read(real time.Duration) time.Duration {
	return c.offset + time.Duration(float64(real)*c.rate)
}

// realAt inverts read: the real time at which the clock shows reading.
func (c clock) realAt(reading time.Duration) time.Duration {
	return time.Duration(float64(reading-c.offset) / c.rate)
}

// TestLeaseNeverOverlaps simulates the protocol with random clock offsets and rates (within the
// drift bound), message delays and revocation timing, and checks that the keeper always fences
// before the leader believes the old lease has ended.
func TestLeaseNeverOverlaps(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	const drift = DefaultDrift
	epoch := time.Unix(1_700_000_000, 0)
	for i := range 20000 {
		ttl := time.Duration(500+r.IntN(10000)) * time.Millisecond
		margin := time.Duration(r.IntN(int(ttl / 10)))
		rate := func() float64 { return 1 - drift + 2*drift*r.Float64() }
		keeper := clock{offset: time.Duration(r.Int64N(int64(time.Hour))), rate: rate()}
		leader := clock{offset: time.Duration(r.Int64N(int64(time.Hour))), rate: rate()}
		// Real timeline: the keeper sends its last majority-granted round at sendReal; a
		// witness of that majority grants it after a delay, and later (at least as late as
		// that grant, as the intersection argument requires) revokes; the leader receives the
		// last revocation acknowledgement after a further delay.
		sendReal := time.Duration(r.Int64N(int64(time.Minute)))
		grantReal := sendReal + time.Duration(r.Int64N(int64(ttl)))
		revokeReal := grantReal + time.Duration(r.Int64N(int64(2*ttl)))
		ackReal := revokeReal + time.Duration(r.Int64N(int64(ttl/2)))

		sendLocal := epoch.Add(keeper.read(sendReal))
		fenceLocal := KeeperDeadline(sendLocal, ttl, drift, margin)
		fenceReal := keeper.realAt(fenceLocal.Sub(epoch))

		ackLocal := epoch.Add(leader.read(ackReal))
		safeLocal := RevocationSafeAfter(ackLocal, ttl, drift)
		safeReal := leader.realAt(safeLocal.Sub(epoch))

		if fenceReal > safeReal {
			t.Fatalf("case %d: keeper fences at real %v but the leader deems the lease over at %v (ttl %v, margin %v, keeper rate %.4f, leader rate %.4f)",
				i, fenceReal, safeReal, ttl, margin, keeper.rate, leader.rate)
		}
		if fenceReal > sendReal+ttl {
			t.Fatalf("case %d: keeper holds the lease beyond ttl real time after the round's send", i)
		}
	}
}

// TestLeaseBoundIsTight shows the drift allowance matters: with the leader's clock fast and the
// keeper's slow at the bound, waiting only ttl on the leader's clock would overlap.
func TestLeaseBoundIsTight(t *testing.T) {
	const ttl, drift = 2 * time.Second, DefaultDrift
	keeper := clock{rate: 1 - drift}
	leader := clock{rate: 1 + drift}
	epoch := time.Unix(0, 0)
	fenceReal := keeper.realAt(KeeperDeadline(epoch, ttl, 0, 0).Sub(epoch)) // no drift allowance on the keeper
	naiveSafeReal := leader.realAt(epoch.Add(ttl).Sub(epoch))
	if fenceReal <= naiveSafeReal {
		t.Fatalf("expected an overlap without the drift allowance: fence %v, safe %v", fenceReal, naiveSafeReal)
	}
	fenceReal = keeper.realAt(KeeperDeadline(epoch, ttl, drift, 0).Sub(epoch))
	safeReal := leader.realAt(RevocationSafeAfter(epoch, ttl, drift).Sub(epoch))
	if fenceReal > safeReal {
		t.Fatalf("with the allowance: fence %v after safe %v", fenceReal, safeReal)
	}
}

func TestCheckLease(t *testing.T) {
	cases := []struct {
		ttl    time.Duration
		drift  float64
		margin time.Duration
		ok     bool
	}{
		{2 * time.Second, DefaultDrift, 200 * time.Millisecond, true},
		{0, DefaultDrift, 0, false},
		{2 * time.Second, 0.6, 0, false},
		{2 * time.Second, DefaultDrift, 1500 * time.Millisecond, false},
	}
	for _, c := range cases {
		if err := CheckLease(c.ttl, c.drift, c.margin); (err == nil) != c.ok {
			t.Errorf("CheckLease(%v, %v, %v) = %v", c.ttl, c.drift, c.margin, err)
		}
	}
	if RenewEvery(2*time.Second) != 500*time.Millisecond {
		t.Error("renewals every ttl/4")
	}
}

// TestShortenedWaitNeverOverlaps simulates whole rounds against several witnesses with drifting
// clocks and checks the shortened wait (RevocationSafeAfterGrants): whatever the offsets, rates
// (often pinned at the drift bound), delays, revocation order and witnesses that forgot their
// grants, the keeper fences before the leader deems the old lease over — and the wait is never
// longer than the one from the last acknowledgement.
func TestShortenedWaitNeverOverlaps(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	const drift = DefaultDrift
	base := time.Unix(1_700_000_000, 0)
	rate := func() float64 {
		switch r.IntN(3) {
		case 0:
			return 1 - drift
		case 1:
			return 1 + drift
		}
		return 1 - drift + 2*drift*r.Float64()
	}
	shortened := 0
	for i := range 20000 {
		n := 3 + 2*r.IntN(2) // 3 or 5 witnesses
		need := n/2 + 1
		ttl := time.Duration(500+r.IntN(5000)) * time.Millisecond
		margin := time.Duration(r.IntN(int(ttl / 10)))
		every := RenewEvery(ttl)
		delay := func() time.Duration {
			if r.IntN(4) == 0 {
				return 0 // the worst case: instant messages
			}
			return time.Duration(r.Int64N(int64(ttl / 3)))
		}
		keeper := clock{offset: time.Duration(r.Int64N(int64(time.Hour))), rate: rate()}
		leader := clock{offset: time.Duration(r.Int64N(int64(time.Hour))), rate: rate()}
		wit := make([]clock, n)
		for j := range wit {
			wit[j] = clock{offset: time.Duration(r.Int64N(int64(time.Hour))), rate: rate()}
		}
		// The leader revokes at witness j at revokeReal[j] (real time): a random moment after
		// the keeper started, so some witnesses revoke while the keeper still renews.
		rounds := 2 + r.IntN(40)
		stopReal := time.Duration(rounds) * every // the keeper dies (or is cut off) here
		revokeReal := make([]time.Duration, n)
		for j := range revokeReal {
			revokeReal[j] = time.Duration(r.Int64N(int64(stopReal + 3*ttl)))
		}
		// Rounds are sent every `every` of keeper time; witness j grants round k if the
		// request reaches it before it revokes. The keeper counts a round once a majority
		// granted it (it hears back in time or not: counting it is the worst case).
		lastGrant := make([]time.Duration, n) // real time of j's last grant; -1: none
		for j := range lastGrant {
			lastGrant[j] = -1
		}
		lastCountedSend := time.Duration(-1) // keeper-clock reading
		for k := range rounds {
			sendLocal := time.Duration(k) * every
			sendReal := keeper.realAt(keeper.offset + sendLocal)
			granted := 0
			for j := range n {
				if r.IntN(10) == 0 {
					continue // lost
				}
				at := sendReal + delay()
				if at < revokeReal[j] {
					granted++
					lastGrant[j] = max(lastGrant[j], at)
				}
			}
			if granted >= need {
				lastCountedSend = keeper.offset + sendLocal
			}
		}
		if lastCountedSend < 0 {
			continue // the keeper never held a lease: nothing to check
		}
		fenceReal := keeper.realAt(KeeperDeadline(base.Add(lastCountedSend), ttl, drift, margin).Sub(base))
		// The leader hears the acknowledgements in arrival order and uses the first majority.
		type ackT struct {
			real  time.Duration
			since time.Duration
		}
		var acks []ackT
		for j := range n {
			since := time.Duration(0)
			if lastGrant[j] >= 0 && r.IntN(8) != 0 { // else: restarted, forgot
				since = wit[j].read(revokeReal[j]) - wit[j].read(lastGrant[j])
			}
			acks = append(acks, ackT{real: revokeReal[j] + delay(), since: since})
		}
		slices.SortFunc(acks, func(a, b ackT) int { return cmp.Compare(a.real, b.real) })
		var counted []RevocationAck
		for _, a := range acks[:need] {
			counted = append(counted, RevocationAck{At: base.Add(leader.read(a.real)), SinceLastGrant: a.since})
		}
		lastAck := counted[need-1].At
		safeLocal := RevocationSafeAfterGrants(counted, ttl, drift)
		if old := RevocationSafeAfter(lastAck, ttl, drift); safeLocal.After(old) {
			t.Fatalf("case %d: the shortened wait ends at %v, after the plain one %v", i, safeLocal, old)
		} else if safeLocal.Before(old) {
			shortened++
		}
		safeReal := leader.realAt(safeLocal.Sub(base))
		if fenceReal > safeReal {
			t.Fatalf("case %d: keeper fences at real %v but the leader deems the lease over at %v (n %d, ttl %v, margin %v, keeper rate %.4f, leader rate %.4f, witnesses %v)",
				i, fenceReal, safeReal, n, ttl, margin, keeper.rate, leader.rate, wit)
		}
	}
	if shortened < 1000 {
		t.Errorf("only %d cases shortened the wait: the simulation does not exercise the rule", shortened)
	}
}

// TestShortenedWaitFactorIsTight shows why the witness's since is scaled by (1−d)/(1+d) and not
// (1−d): with the witness's clock fast, the leader's slow and the keeper's slow, all at the
// bound, (1−d) alone lets the leader stop waiting before the keeper fences.
func TestShortenedWaitFactorIsTight(t *testing.T) {
	const ttl, drift = 2 * time.Second, DefaultDrift
	keeper := clock{rate: 1 - drift}
	leader := clock{rate: 1 - drift}
	w := clock{rate: 1 + drift}
	base := time.Unix(0, 0)
	// The keeper's last counted round is sent at real 0 and granted at once by w, which
	// revokes 10 s later; the acknowledgement arrives at once.
	fenceReal := keeper.realAt(KeeperDeadline(base, ttl, drift, 0).Sub(base))
	since := w.read(10*time.Second) - w.read(0)
	ackLocal := base.Add(leader.read(10 * time.Second))
	naive := ackLocal.Add(-time.Duration(float64(since) * (1 - drift))).Add(time.Duration(float64(ttl) * (1 + drift)))
	if naiveReal := leader.realAt(naive.Sub(base)); fenceReal <= naiveReal {
		t.Fatalf("expected an overlap with the (1−d) factor: fence %v, safe %v", fenceReal, naiveReal)
	}
	safe := RevocationSafeAfterGrants([]RevocationAck{{At: ackLocal, SinceLastGrant: since}}, ttl, drift)
	if safeReal := leader.realAt(safe.Sub(base)); fenceReal > safeReal {
		t.Fatalf("with (1−d)/(1+d): fence %v after safe %v", fenceReal, safeReal)
	}
}

func TestGrantBound(t *testing.T) {
	at := time.Unix(100, 0)
	if !GrantBound(nil, DefaultDrift).IsZero() {
		t.Error("no acknowledgements: want the zero time")
	}
	// A witness that does not know (0) bounds at its acknowledgement: the old rule.
	got := GrantBound([]RevocationAck{{At: at, SinceLastGrant: 5 * time.Second}, {At: at.Add(-time.Second)}}, DefaultDrift)
	if !got.Equal(at.Add(-time.Second)) {
		t.Errorf("bound %v, want the unknowing witness's acknowledgement %v", got, at.Add(-time.Second))
	}
	got = GrantBound([]RevocationAck{{At: at, SinceLastGrant: 2100 * time.Millisecond}, {At: at, SinceLastGrant: -time.Second}}, 0.05)
	if !got.Equal(at) {
		t.Errorf("a negative since must count as 0: %v", got)
	}
	got = GrantBound([]RevocationAck{{At: at, SinceLastGrant: 2100 * time.Millisecond}}, 0.05)
	if want := at.Add(-1900 * time.Millisecond); !got.Equal(want) {
		t.Errorf("bound %v, want %v (2.1 s × 0.95/1.05)", got, want)
	}
}
