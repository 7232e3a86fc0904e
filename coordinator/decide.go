package coordinator

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
	"github.com/regentdb/regent/spec"
)

// TagNoFailover is the node tag that keeps a node from being promoted.
const TagNoFailover = "nofailover"

// ErrNoCandidate is wrapped by ChooseCandidate's errors: no node may be promoted, or the
// node asked for may not be.
var ErrNoCandidate = errors.New("no failover candidate")

// Decision is what Decide concluded about one cluster at one instant.
type Decision struct {
	// Down: a majority of the witnesses (st.members) have committed votes saying the primary
	// is unreachable, each for at least down_after. The rest of the evidence rule (witnesses
	// from two regions, no standby still streaming from the primary) decides Failover, and
	// its failure is a Refusal: Down alone is worth an alert.
	Down bool
	// Failover: start one now, promoting Candidate.
	Failover bool
	// Candidate is the node to promote when Failover is true.
	Candidate string
	// Reason is the trigger reason when Down, naming the witnesses and for how long, e.g.
	// "primary pg-us unreachable from w1 (us-east), w2 (eu-west) for 1.6s".
	Reason string
	// Refusal says why not when Down but not Failover: no quorum of witnesses from two
	// regions, a standby still streams from the primary, paused, cooldown, or no candidate
	// (each node's reasons). It is empty when a failover of the cluster is already running:
	// its saga is the answer.
	Refusal string
	// OldPrimaryLSN is the primary's committed current_lsn, the last LSN a witness saw it
	// write (set when Down).
	OldPrimaryLSN uint64
	// EstimatedLossBytes is OldPrimaryLSN minus the candidate's received LSN, at least 0
	// (set when Failover).
	EstimatedLossBytes int64
}

// Decide applies the evidence rule of DESIGN.md ("Flows: 2. Decide") to cluster in st at
// time now. It is pure: no clock, no I/O, st is not modified.
//
// The witnesses are all of st.members; a vote from a witness that is no longer a member does
// not count. The primary (cluster.primary) is down when a majority of the witnesses have
// voted it unreachable with a since at or before now − down_after. A failover additionally
// needs:
//
//   - no failover of the cluster still running (then no Refusal: the saga runs);
//   - the down-voting witnesses span at least two regions (member.region), so that one
//     region cut off from the primary cannot fail it over;
//   - no standby that a majority of the witnesses reach reports wal_receiver_status
//     "streaming" from the primary's host:port (the replicas are witnesses too: one that
//     still streams proves the primary alive and the witnesses' view partitioned);
//   - the cluster is not paused, and not within cooldown of its last completed failover;
//   - a candidate (ChooseCandidate, without force; votes of former members dropped).
//
// Each failed condition gives the Refusal, checked in that order.
func Decide(st *regentv1.State, cluster string, now time.Time) Decision {
	c := findDecideCluster(st, cluster)
	if c == nil || c.GetPrimary() == "" {
		return Decision{}
	}
	ps := statusByName(c, c.GetPrimary())
	regions := make(map[string]string, len(st.GetMembers()))
	for _, m := range st.GetMembers() {
		regions[m.GetName()] = m.GetRegion()
	}
	quorum := len(regions)/2 + 1
	if len(regions) == 0 || ps == nil {
		return Decision{}
	}
	pol := spec.WithDefaults(c.GetPolicy())
	cutoff := now.Add(-time.Duration(pol.GetDownAfterMs()) * time.Millisecond)

	var voters []*regentv1.Vote // unreachable long enough, from members, in witness order
	var newest time.Time
	for _, v := range ps.GetVotes() {
		if _, member := regions[v.GetWitness()]; !member || v.GetReachable() || v.GetSince() == nil || v.GetSince().CheckValid() != nil {
			continue
		}
		since := v.GetSince().AsTime()
		if since.After(cutoff) {
			continue
		}
		voters = append(voters, v)
		if since.After(newest) {
			newest = since
		}
	}
	if len(voters) < quorum {
		return Decision{}
	}

	var named []string
	voterRegions := map[string]bool{}
	for _, v := range voters {
		r := regions[v.GetWitness()]
		voterRegions[r] = true
		named = append(named, fmt.Sprintf("%s (%s)", v.GetWitness(), r))
	}
	d := Decision{
		Down:          true,
		OldPrimaryLSN: ps.GetCurrentLsn(),
		Reason: fmt.Sprintf("primary %s unreachable from %s for %s", c.GetPrimary(), strings.Join(named, ", "),
			now.Sub(newest).Round(100*time.Millisecond)),
	}

	var lastDone *regentv1.FailoverEvent
	for _, ev := range st.GetFailoverEvents() {
		if ev.GetCluster() != c.GetName() {
			continue
		}
		switch ev.GetStep() {
		case regentv1.FailoverStep_FAILOVER_STEP_ABORTED:
		case regentv1.FailoverStep_FAILOVER_STEP_COMPLETED:
			if ev.GetCompletedAt() != nil && (lastDone == nil || ev.GetCompletedAt().AsTime().After(lastDone.GetCompletedAt().AsTime())) {
				lastDone = ev
			}
		default:
			return d // a saga runs; it is the answer
		}
	}

	if len(voterRegions) < 2 {
		d.Refusal = fmt.Sprintf("no quorum of witnesses from two regions: only %s see primary %s unreachable",
			strings.Join(named, ", "), c.GetPrimary())
		return d
	}
	if streaming := streamingFromPrimary(c, regions, quorum); len(streaming) > 0 {
		if len(streaming) == 1 {
			d.Refusal = fmt.Sprintf("standby %s still streams from the primary; the witnesses' view is partitioned", streaming[0])
		} else {
			d.Refusal = fmt.Sprintf("standbys %s still stream from the primary; the witnesses' view is partitioned", strings.Join(streaming, ", "))
		}
		return d
	}
	if c.GetPaused() {
		d.Refusal = "paused"
		if c.GetPauseReason() != "" {
			d.Refusal += ": " + c.GetPauseReason()
		}
		return d
	}
	if lastDone != nil {
		until := lastDone.GetCompletedAt().AsTime().Add(time.Duration(pol.GetCooldownMs()) * time.Millisecond)
		if until.After(now) {
			d.Refusal = fmt.Sprintf("cooldown until %s after failover %d", until.UTC().Format(time.RFC3339), lastDone.GetId())
			return d
		}
	}

	// Candidates are judged on the current witnesses' votes only.
	fc := proto.Clone(c).(*regentv1.Cluster)
	for _, ns := range fc.GetNodeStatus() {
		ns.Votes = slices.DeleteFunc(ns.Votes, func(v *regentv1.Vote) bool {
			_, member := regions[v.GetWitness()]
			return !member
		})
	}
	best, rejected := rankCandidates(fc, st.GetChannels(), d.OldPrimaryLSN, false)
	if best == nil {
		d.Refusal = "no candidate: " + noCandidateDetail(fc, rejected)
		return d
	}
	d.Failover = true
	d.Candidate = best.GetName()
	d.EstimatedLossBytes = lossBytes(d.OldPrimaryLSN, statusByName(fc, best.GetName()))
	return d
}

// ChooseCandidate picks the node of c to promote in place of its primary, or, when to is
// not empty, checks that node instead (a manual failover naming its target). channels are
// the replication channels (others' clusters are ignored); oldPrimaryLSN is the last LSN
// the old primary was seen to write.
//
// A node qualifies when it is not the primary; a majority of its committed votes say it is
// reachable; it is not tagged nofailover; it does not answer with another cluster's system
// identifier; its role is replica; and, unless force, it is at most max_lag_on_failover
// bytes behind oldPrimaryLSN and its region's channel lags at most failover_lag_threshold.
// Force skips only those two lag checks. Among qualifying nodes the one with the highest
// received LSN wins (a standby's replay LSN counts when higher, as for one restoring from an
// archive), then the higher priority, then the lower name.
//
// Errors wrap ErrNoCandidate and say, per node, why it does not qualify.
func ChooseCandidate(c *regentv1.Cluster, channels []*regentv1.ReplicationChannel, oldPrimaryLSN uint64, force bool, to string) (string, error) {
	if to == "" {
		best, rejected := rankCandidates(c, channels, oldPrimaryLSN, force)
		if best == nil {
			return "", fmt.Errorf("%w in cluster %s: %s", ErrNoCandidate, c.GetName(), noCandidateDetail(c, rejected))
		}
		return best.GetName(), nil
	}
	n := specByName(c, to)
	switch {
	case n == nil:
		var names []string
		for _, o := range c.GetNodes() {
			names = append(names, o.GetName())
		}
		return "", fmt.Errorf("%w: node %q is not in cluster %s (nodes: %s)", ErrNoCandidate, to, c.GetName(), strings.Join(names, ", "))
	case to == c.GetPrimary():
		return "", fmt.Errorf("%w: %s is already the primary of %s; name a standby to promote", ErrNoCandidate, to, c.GetName())
	}
	reasons, lagOnly := disqualify(c, n, channels, oldPrimaryLSN, force)
	if len(reasons) == 0 {
		return to, nil
	}
	advice := "fix that or name another node"
	if lagOnly {
		advice = "force skips the lag checks, and the writes it has not received are lost"
	}
	return "", fmt.Errorf("%w: %s cannot be promoted: %s; %s", ErrNoCandidate, to, strings.Join(reasons, ", "), advice)
}

// rankCandidates returns the best qualifying node (nil when none) and the reasons of every
// other non-primary node that does not qualify, in spec order.
func rankCandidates(c *regentv1.Cluster, channels []*regentv1.ReplicationChannel, oldLSN uint64, force bool) (*regentv1.NodeSpec, []string) {
	var ok []*regentv1.NodeSpec
	var rejected []string
	for _, n := range c.GetNodes() {
		if n.GetName() == c.GetPrimary() {
			continue
		}
		if reasons, _ := disqualify(c, n, channels, oldLSN, force); len(reasons) > 0 {
			rejected = append(rejected, n.GetName()+": "+strings.Join(reasons, ", "))
			continue
		}
		ok = append(ok, n)
	}
	if len(ok) == 0 {
		return nil, rejected
	}
	best := slices.MinFunc(ok, func(a, b *regentv1.NodeSpec) int {
		if r := cmp.Compare(walPosition(statusByName(c, b.GetName())), walPosition(statusByName(c, a.GetName()))); r != 0 {
			return r // higher LSN first
		}
		if r := cmp.Compare(b.GetPriority(), a.GetPriority()); r != 0 {
			return r // higher priority first
		}
		return strings.Compare(a.GetName(), b.GetName())
	})
	return best, rejected
}

func noCandidateDetail(c *regentv1.Cluster, rejected []string) string {
	if len(rejected) == 0 {
		return fmt.Sprintf("cluster %s has no node besides its primary %s", c.GetName(), c.GetPrimary())
	}
	return strings.Join(rejected, "; ")
}

// disqualify lists why n may not be promoted (none when it may); lagOnly is true when every
// reason is one that force would skip.
func disqualify(c *regentv1.Cluster, n *regentv1.NodeSpec, channels []*regentv1.ReplicationChannel, oldLSN uint64, force bool) (reasons []string, lagOnly bool) {
	ns := statusByName(c, n.GetName())
	if up, total := reachCount(ns); up*2 <= total || total == 0 {
		reasons = append(reasons, fmt.Sprintf("unreachable (%d of %d witness votes reach it)", up, total))
	}
	if slices.Contains(n.GetTags(), TagNoFailover) {
		reasons = append(reasons, "tagged "+TagNoFailover)
	}
	if ns.GetWrongSystem() {
		reasons = append(reasons, "answers with another cluster's system identifier")
	}
	if role := ns.GetRole(); role != regentv1.NodeRole_NODE_ROLE_REPLICA {
		reasons = append(reasons, fmt.Sprintf("role is %s, not replica", roleName(role)))
	}
	hard := len(reasons)
	if !force {
		pol := spec.WithDefaults(c.GetPolicy())
		if lag := lossBytes(oldLSN, ns); lag > pol.GetMaxLagOnFailoverBytes() {
			reasons = append(reasons, fmt.Sprintf("%s behind the old primary's last LSN, over max_lag_on_failover %s",
				formatBytes(lag), formatBytes(pol.GetMaxLagOnFailoverBytes())))
		}
		if ch := channelFor(channels, c, n); ch != nil && ch.GetLagSeconds()*1000 > pol.GetFailoverLagThresholdMs() {
			reasons = append(reasons, fmt.Sprintf("region %s lags %ds, over failover_lag_threshold %s", n.GetRegion(), ch.GetLagSeconds(),
				time.Duration(pol.GetFailoverLagThresholdMs())*time.Millisecond))
		}
	}
	return reasons, hard == 0 && len(reasons) > 0
}

// streamingFromPrimary returns the standbys that a quorum of the witnesses reach and that
// report streaming from the primary's host:port, in spec order.
func streamingFromPrimary(c *regentv1.Cluster, members map[string]string, quorum int) []string {
	p := specByName(c, c.GetPrimary())
	if p == nil {
		return nil
	}
	var out []string
	for _, n := range c.GetNodes() {
		ns := statusByName(c, n.GetName())
		if n.GetName() == c.GetPrimary() || ns == nil || ns.GetWrongSystem() || ns.GetWalReceiverStatus() != WalReceiverStreaming {
			continue
		}
		reach := 0
		for _, v := range ns.GetVotes() {
			if _, member := members[v.GetWitness()]; member && v.GetReachable() {
				reach++
			}
		}
		if reach >= quorum && sameEndpoint(ns.GetUpstream(), p.GetHost(), p.GetPort()) {
			out = append(out, n.GetName())
		}
	}
	return out
}

// defaultPGPort is assumed for an upstream written without a port.
const defaultPGPort = 5432

// sameEndpoint reports whether upstream ("host:port", or a bare host meaning port 5432)
// names host:port. Host names compare case-insensitively, and localhost, 127.0.0.1 and ::1
// are one host.
func sameEndpoint(upstream, host string, port uint32) bool {
	if upstream == "" {
		return false
	}
	h, ps, err := net.SplitHostPort(upstream)
	if err != nil {
		h, ps = strings.Trim(upstream, "[]"), strconv.Itoa(defaultPGPort)
	}
	p, err := strconv.ParseUint(ps, 10, 32)
	if err != nil || uint32(p) != port {
		return false
	}
	return canonicalHost(h) == canonicalHost(host)
}

func canonicalHost(h string) string {
	h = strings.ToLower(strings.Trim(h, "[]"))
	switch h {
	case "localhost", "127.0.0.1", "::1":
		return "loopback"
	}
	return h
}

func findDecideCluster(st *regentv1.State, name string) *regentv1.Cluster {
	for _, c := range st.GetClusters() {
		if c.GetName() == name {
			return c
		}
	}
	return nil
}

func statusByName(c *regentv1.Cluster, name string) *regentv1.NodeStatus {
	for _, ns := range c.GetNodeStatus() {
		if ns.GetName() == name {
			return ns
		}
	}
	return nil
}

func specByName(c *regentv1.Cluster, name string) *regentv1.NodeSpec {
	for _, n := range c.GetNodes() {
		if n.GetName() == name {
			return n
		}
	}
	return nil
}

// reachCount counts the votes saying the node is reachable, and all votes.
func reachCount(ns *regentv1.NodeStatus) (up, total int) {
	for _, v := range ns.GetVotes() {
		if v.GetReachable() {
			up++
		}
	}
	return up, len(ns.GetVotes())
}

// walPosition is how far a standby has WAL: its received LSN, or its replay LSN when higher.
func walPosition(ns *regentv1.NodeStatus) uint64 {
	return max(ns.GetReceivedLsn(), ns.GetReplayLsn())
}

// lossBytes is how many bytes of the old primary's WAL the standby lacks, at least 0.
func lossBytes(oldLSN uint64, ns *regentv1.NodeStatus) int64 {
	pos := walPosition(ns)
	if pos >= oldLSN {
		return 0
	}
	return int64(min(oldLSN-pos, 1<<63-1))
}

// channelFor is the channel carrying WAL from the primary's region to n's region.
func channelFor(channels []*regentv1.ReplicationChannel, c *regentv1.Cluster, n *regentv1.NodeSpec) *regentv1.ReplicationChannel {
	p := specByName(c, c.GetPrimary())
	if p == nil {
		return nil
	}
	for _, ch := range channels {
		if ch.GetCluster() == c.GetName() && ch.GetPrimaryRegion() == p.GetRegion() && ch.GetSecondaryRegion() == n.GetRegion() {
			return ch
		}
	}
	return nil
}

func roleName(r regentv1.NodeRole) string {
	return strings.ToLower(strings.TrimPrefix(r.String(), "NODE_ROLE_"))
}

// formatBytes writes a byte count with PostgreSQL's 1024-based units, as specs do.
func formatBytes(b int64) string {
	units := []string{"B", "kB", "MB", "GB", "TB"}
	v, i := float64(b), 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	if v == math.Trunc(v) {
		return fmt.Sprintf("%.0f%s", v, units[i])
	}
	return fmt.Sprintf("%.1f%s", v, units[i])
}
