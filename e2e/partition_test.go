package e2e

import (
	"context"
	"net"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/regentdb/regent/fencing"
	"github.com/regentdb/regent/internal/cutproxy"
	"github.com/regentdb/regent/internal/witnesstest"
	"github.com/regentdb/regent/pgconnect"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// acksBefore is how many acknowledged writes a writer must have before the test moves on.
const acksBefore = 20

// The primary's whole host cut off while a client on its side keeps writing: its keeper
// fences it before its lease ends, the promotion elsewhere comes only after that, no two
// nodes ever acknowledge writes in overlapping time, and when the cut heals the old primary
// rejoins as a standby of the new one.
//
// The cut closes every connection to and from the host and then either blackholes new ones
// (they hang, as across a partition that drops packets) or refuses them (reset at once).
func TestPartitionedPrimary(t *testing.T) {
	for _, mode := range []cutproxy.Mode{cutproxy.Blackhole, cutproxy.Refuse} {
		t.Run(mode.String(), func(t *testing.T) { testPartition(t, mode) })
	}
}

func testPartition(t *testing.T, mode cutproxy.Mode) {
	r := startRig(t, rigOptions{cutUS: true})
	ctx := witnesstest.Context(t, 3*time.Minute)
	us := r.nodes["pg-us"]
	if err := us.pg.Exec(ctx, createWritesTable); err != nil {
		t.Fatal(err)
	}

	// Two clients: one on pg-us's side of the cut, writing to it directly; one elsewhere,
	// writing to whichever node regent names primary, at its address in the spec.
	l := &ledger{}
	side := startWriter(t, "side", l, func(context.Context) (string, pgconnect.Target, bool) {
		return "pg-us", r.target(us), true
	})
	world := startWriter(t, "world", l, r.routeByRegent(t))
	waitAcks(t, l, "side", "pg-us", acksBefore)
	waitAcks(t, l, "world", "pg-us", acksBefore)

	cutAt := time.Now()
	r.cut(mode)
	t.Logf("cut pg-us's host off (%d links, new connections: %v)", len(r.links), mode)

	ev := r.waitFailover(wait)
	nu := r.nodes[ev.GetToNode()]
	t.Logf("failover %d: %s → %s, fence %q, steps %v, notes %q", ev.GetId(), ev.GetFromNode(), ev.GetToNode(),
		ev.GetFenceMethod(), ev.GetSteps(), ev.GetNotes())
	waitAcks(t, l, "world", nu.name, acksBefore)

	// What pg-us's keeper did, before the heal lets it hear from the witnesses again.
	st := us.keeper.Status(ctx, false)
	leaseEnd := fencing.KeeperDeadline(st.LastGrantedSend, ttl, drift, 0)
	t.Logf("pg-us's keeper: last granted round sent %v before the cut, fenced %v after the cut (%s), lease end %v after the cut",
		cutAt.Sub(st.LastGrantedSend), st.FencedAt.Sub(cutAt), st.FenceReason, leaseEnd.Sub(cutAt))
	if st.LastGrantedSend.IsZero() || st.LastGrantedSend.After(cutAt) {
		t.Errorf("pg-us's keeper's last granted round was sent at %v, the cut at %v: the cut did not cut it off", st.LastGrantedSend, cutAt)
	}
	// Read-only before its lease ends.
	if st.FencedAt.Before(cutAt) || !st.FencedAt.Before(leaseEnd) {
		t.Errorf("pg-us's keeper fenced %v after the cut; its lease ended %v after the cut", st.FencedAt.Sub(cutAt), leaseEnd.Sub(cutAt))
	}
	// The promotion only after that: the saga commits its fence step before it promotes.
	fenced, promoted := stepAt(ev, regentv1.FailoverStep_FAILOVER_STEP_FENCED), stepAt(ev, regentv1.FailoverStep_FAILOVER_STEP_PROMOTED)
	if fenced.IsZero() || !st.FencedAt.Before(fenced) || !fenced.Before(promoted) {
		t.Errorf("pg-us was fenced at %v, the saga's fence step committed at %v and its promotion at %v: the promotion must come after the fence",
			st.FencedAt.Format(time.StampMicro), fenced.Format(time.StampMicro), promoted.Format(time.StampMicro))
	}

	acks, refusals := l.snapshot()
	ss := spans(acks)
	if len(ss) != 2 || ss[0].node != "pg-us" || ss[1].node != nu.name {
		t.Fatalf("acknowledged writes by node: %+v, want pg-us then %s", ss, nu.name)
	}
	oldLast, newFirst := ss[0].last, ss[1].first
	t.Logf("last ack on pg-us %v after the cut (%s/%d), first write acknowledged by %s sent %v after the cut; refusals: %s",
		oldLast.at.Sub(cutAt), oldLast.writer, oldLast.id, nu.name, newFirst.sent.Sub(cutAt), refusalKinds(refusals))
	// The client on pg-us's side saw it refuse writes before the new primary took any.
	sawRefusal := false
	for _, rf := range refusals {
		if rf.writer == "side" && rf.at.After(oldLast.at) && rf.at.Before(newFirst.sent) {
			sawRefusal = true
			break
		}
	}
	if !sawRefusal {
		t.Errorf("the client on pg-us's side saw no refused write between pg-us's last ack and %s's first", nu.name)
	}

	r.heal()
	healedAt := time.Now()
	t.Logf("healed the cut")
	// The old primary comes back as a standby of the new one: the leader instructs pg-us's
	// keeper to rejoin once it can reach it (agent/rejoin.go).
	var rec bool
	var recvStatus, sender string
	witnesstest.Eventually(t, wait, "pg-us rejoining as a standby streaming from "+nu.name, func() bool {
		var host *string
		var port *int32
		var status *string
		err := us.pg.QueryRow(ctx, `SELECT pg_is_in_recovery(), (SELECT status FROM pg_stat_wal_receiver),
			(SELECT sender_host FROM pg_stat_wal_receiver), (SELECT sender_port FROM pg_stat_wal_receiver)`).Scan(&rec, &status, &host, &port)
		if err != nil || status == nil || host == nil || port == nil {
			return false
		}
		recvStatus, sender = *status, net.JoinHostPort(*host, strconv.Itoa(int(*port)))
		return rec && recvStatus == "streaming" && sender == net.JoinHostPort(nu.pg.Host, strconv.Itoa(nu.pg.Port))
	})
	t.Logf("pg-us streams from %s %v after the heal", sender, time.Since(healedAt))

	// The writers run on: pg-us, a standby now, must never acknowledge again.
	if err := us.pg.WaitCaughtUp(ctx, nu.pg); err != nil {
		t.Fatal(err)
	}
	side.Stop()
	world.Stop()
	acks, refusals = l.snapshot()
	for _, o := range overlaps(acks) {
		t.Errorf("overlapping writes: %s", o)
	}
	for _, a := range acks {
		if a.node == "pg-us" && (!a.sent.Before(leaseEnd) || !a.sent.Before(st.FencedAt)) {
			t.Errorf("pg-us acknowledged %s/%d sent %v after the cut: after its fence (%v) or its lease end (%v)",
				a.writer, a.id, a.sent.Sub(cutAt), st.FencedAt.Sub(cutAt), leaseEnd.Sub(cutAt))
		}
	}
	// Every write the new primary acknowledged is there, and on the rejoined old primary.
	for _, s := range []*node{nu, us} {
		missing, err := missingAcks(ctx, s.pg, acks, "world", nu.name)
		if err != nil {
			t.Fatal(err)
		}
		if len(missing) > 0 {
			t.Errorf("%s lacks %d writes %s acknowledged: %v", s.name, len(missing), nu.name, missing)
		}
	}
	t.Logf("acks %d, refusals: %s", len(acks), refusalKinds(refusals))
}

// routeByRegent routes a writer to the node the witnesses name primary (GetState, asked at
// most every 100ms), at its address in the spec.
func (r *rig) routeByRegent(t *testing.T) func(context.Context) (string, pgconnect.Target, bool) {
	// A connection of its own: the witness cluster's clients are for the test goroutine.
	conn, err := grpc.NewClient(r.w.Configs[0].GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	client := regentv1.NewRegentClient(conn)
	var asked time.Time
	var primary *regentv1.NodeSpec
	return func(ctx context.Context) (string, pgconnect.Target, bool) {
		if time.Since(asked) >= 100*time.Millisecond {
			asked = time.Now()
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			resp, err := client.GetState(cctx, &regentv1.GetStateRequest{})
			cancel()
			if err == nil {
				for _, c := range resp.GetClusters() {
					if c.GetName() != "orders" {
						continue
					}
					for _, n := range c.GetNodes() {
						if n.GetName() == c.GetPrimary() {
							primary = n
						}
					}
				}
			}
		}
		if primary == nil {
			return "", pgconnect.Target{}, false
		}
		tg := r.target(r.nodes[primary.GetName()])
		tg.Host, tg.Port = primary.GetHost(), uint16(primary.GetPort())
		return primary.GetName(), tg, true
	}
}

// waitAcks waits until writer has n acknowledged writes on node.
func waitAcks(t *testing.T, l *ledger, writer, node string, n int) {
	t.Helper()
	witnesstest.Eventually(t, wait, strconv.Itoa(n)+" writes of "+writer+" acknowledged by "+node, func() bool {
		acks, _ := l.snapshot()
		got := 0
		for _, a := range acks {
			if a.writer == writer && a.node == node {
				got++
			}
		}
		return got >= n
	})
}
