package fencing

import (
	"math/rand/v2"
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
