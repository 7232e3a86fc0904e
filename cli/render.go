package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/regentdb/regent/internal/pglsn"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// jsonOptions render every field under its proto name, so scripts can rely on the keys.
var jsonOptions = protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}

// marshalJSON renders m as protojson, then re-indents it with encoding/json: protojson's own
// whitespace is deliberately unstable between builds, and stable output diffs better.
func marshalJSON(m proto.Message, indent bool) ([]byte, error) {
	raw, err := jsonOptions.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode %s as JSON: %w", m.ProtoReflect().Descriptor().Name(), err)
	}
	var buf bytes.Buffer
	if indent {
		err = json.Indent(&buf, raw, "", "  ")
	} else {
		err = json.Compact(&buf, raw)
	}
	if err != nil {
		return nil, fmt.Errorf("format JSON: %w", err)
	}
	buf.WriteByte('\n')
	return buf.Bytes(), nil
}

// printJSON writes m to w as indented protojson.
func printJSON(w io.Writer, m proto.Message) error {
	out, err := marshalJSON(m, true)
	if err != nil {
		return err
	}
	if _, err := w.Write(out); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	return nil
}

// table is a tabwriter with a header row.
type table struct {
	tw *tabwriter.Writer
}

func newTable(w io.Writer, headers ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)}
	t.row(headers...)
	return t
}

func (t *table) row(cells ...string) {
	fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
}

func (t *table) flush() error {
	if err := t.tw.Flush(); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	return nil
}

// formatLSN prints a WAL location as PostgreSQL does (e.g. 16/B374D848); 0 means unknown.
func formatLSN(lsn uint64) string {
	if lsn == 0 {
		return "-"
	}
	return pglsn.Format(lsn)
}

// formatBytes prints a byte count with binary units: 512 B, 18.0 KiB, 1.5 GiB.
func formatBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatUint(n, 10) + " B"
	}
	f := float64(n)
	for _, u := range []string{"KiB", "MiB", "GiB", "TiB", "PiB"} {
		f /= unit
		if f < unit || u == "PiB" {
			return fmt.Sprintf("%.1f %s", f, u)
		}
	}
	panic("unreachable")
}

// formatDuration prints a duration for people: 350ms, 4.2s, 4m30s, 2h5m, 3d4h.
func formatDuration(d time.Duration) string {
	if d < 0 {
		d = -d
	}
	switch {
	case d < time.Second:
		return fmt.Sprintf("%dms", d.Milliseconds())
	case d < 10*time.Second:
		return strconv.FormatFloat(d.Seconds(), 'f', 1, 64) + "s"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		m, s := int(d/time.Minute), int(d%time.Minute/time.Second)
		if s == 0 {
			return fmt.Sprintf("%dm", m)
		}
		return fmt.Sprintf("%dm%ds", m, s)
	case d < 24*time.Hour:
		h, m := int(d/time.Hour), int(d%time.Hour/time.Minute)
		if m == 0 {
			return fmt.Sprintf("%dh", h)
		}
		return fmt.Sprintf("%dh%dm", h, m)
	default:
		days, h := int(d/(24*time.Hour)), int(d%(24*time.Hour)/time.Hour)
		if h == 0 {
			return fmt.Sprintf("%dd", days)
		}
		return fmt.Sprintf("%dd%dh", days, h)
	}
}

// formatSeconds prints a lag in seconds as a duration.
func formatSeconds(s float64) string {
	switch {
	case math.IsNaN(s) || math.IsInf(s, 0):
		return "-"
	case s == 0:
		return "0s"
	}
	return formatDuration(time.Duration(s * float64(time.Second)))
}

// age prints how long ago ts was, relative to now: "5m ago"; "-" when unset.
func age(ts *timestamppb.Timestamp, now time.Time) string {
	if ts == nil || (ts.GetSeconds() == 0 && ts.GetNanos() == 0) {
		return "-"
	}
	d := now.Sub(ts.AsTime())
	switch {
	case d < -time.Second:
		return "in " + formatDuration(d) // a clock ahead of ours
	case d < time.Second:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	default:
		return formatDuration(d.Truncate(time.Second)) + " ago"
	}
}

func set(ts *timestamppb.Timestamp) bool {
	return ts != nil && (ts.GetSeconds() != 0 || ts.GetNanos() != 0)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// enumName turns NODE_ROLE_PRIMARY into "primary" given the prefix "NODE_ROLE_".
func enumName(full, prefix string) string {
	return strings.ToLower(strings.TrimPrefix(full, prefix))
}

func roleName(r regentv1.NodeRole) string { return enumName(r.String(), "NODE_ROLE_") }

func channelStatusName(s regentv1.ChannelStatus) string {
	if s == regentv1.ChannelStatus_CHANNEL_STATUS_UNSPECIFIED {
		return "-"
	}
	return enumName(s.String(), "CHANNEL_STATUS_")
}

func stepName(s regentv1.FailoverStep) string {
	if s == regentv1.FailoverStep_FAILOVER_STEP_UNSPECIFIED {
		return "-"
	}
	return enumName(s.String(), "FAILOVER_STEP_")
}

// printMembers writes the witnesses table, sorted by name.
func printMembers(w io.Writer, members []*regentv1.MemberStatus) error {
	ms := append([]*regentv1.MemberStatus(nil), members...)
	sort.SliceStable(ms, func(i, j int) bool { return ms[i].GetName() < ms[j].GetName() })
	t := newTable(w, "NAME", "REGION", "RAFT", "VOTER", "GOSSIP", "ADDR")
	for _, m := range ms {
		addr := m.GetGrpcAddr()
		if addr == "" {
			addr = m.GetRaftAddr()
		}
		t.row(dash(m.GetName()), dash(m.GetRegion()), dash(m.GetRaftRole()), yesNo(m.GetVoter()),
			dash(m.GetGossip()), dash(addr))
	}
	return t.flush()
}

// printKeepers writes one row per keeper in gossip, sorted by cluster and node.
func printKeepers(w io.Writer, keepers []*regentv1.KeeperMember, now time.Time) error {
	ks := append([]*regentv1.KeeperMember(nil), keepers...)
	sort.SliceStable(ks, func(i, j int) bool {
		if ks[i].GetCluster() != ks[j].GetCluster() {
			return ks[i].GetCluster() < ks[j].GetCluster()
		}
		return ks[i].GetNode() < ks[j].GetNode()
	})
	t := newTable(w, "CLUSTER", "NODE", "GOSSIP", "SINCE", "KEEPER_ADDR", "HTTP_ADDR")
	for _, k := range ks {
		t.row(dash(k.GetCluster()), dash(k.GetNode()), dash(k.GetGossip()), age(k.GetSince(), now),
			dash(k.GetKeeperAddr()), dash(k.GetHttpAddr()))
	}
	return t.flush()
}

func sortedClusters(clusters []*regentv1.Cluster) []*regentv1.Cluster {
	cs := append([]*regentv1.Cluster(nil), clusters...)
	sort.SliceStable(cs, func(i, j int) bool { return cs[i].GetName() < cs[j].GetName() })
	return cs
}

// printClusters writes one row per cluster, sorted by name.
func printClusters(w io.Writer, clusters []*regentv1.Cluster) error {
	t := newTable(w, "NAME", "PRIMARY", "NODES", "VERSION", "PAUSED")
	for _, c := range sortedClusters(clusters) {
		t.row(c.GetName(), dash(c.GetPrimary()), strconv.Itoa(len(c.GetNodes())),
			strconv.FormatUint(c.GetSpecVersion(), 10), yesNo(c.GetPaused()))
	}
	return t.flush()
}

// printNodes writes a cluster's nodes in spec order with their observed status. LSN is the
// primary's current LSN or a replica's replay LSN; LAG is how far that is behind the primary.
// When the answering witness's gossip knows any keeper, a KEEPER column gives the gossip state
// of each node's keeper ("-": not in gossip).
func printNodes(w io.Writer, c *regentv1.Cluster, keepers []*regentv1.KeeperMember) error {
	byName := make(map[string]*regentv1.NodeStatus, len(c.GetNodeStatus()))
	for _, s := range c.GetNodeStatus() {
		byName[s.GetName()] = s
	}
	primaryLSN := byName[c.GetPrimary()].GetCurrentLsn()
	keeperState := map[string]string{}
	for _, k := range keepers {
		if k.GetCluster() == c.GetName() {
			keeperState[k.GetNode()] = k.GetGossip()
		}
	}

	headers := []string{"NODE", "REGION", "HOST:PORT", "ROLE", "TIMELINE", "LSN", "LAG", "VOTES"}
	if len(keepers) > 0 {
		headers = append(headers, "KEEPER")
	}
	t := newTable(w, headers...)
	for _, n := range c.GetNodes() {
		s := byName[n.GetName()] // nil when not yet observed; getters return zero values
		role := roleName(s.GetRole())
		lsn, lag := s.GetCurrentLsn(), "-"
		if s.GetRole() != regentv1.NodeRole_NODE_ROLE_PRIMARY {
			lsn = s.GetReplayLsn()
			if lsn != 0 && primaryLSN != 0 && n.GetName() != c.GetPrimary() {
				if lsn >= primaryLSN {
					lag = "0 B"
				} else {
					lag = formatBytes(primaryLSN - lsn)
				}
			}
		}
		timeline := "-"
		if s.GetTimeline() != 0 {
			timeline = strconv.FormatUint(uint64(s.GetTimeline()), 10)
		}
		cells := []string{n.GetName(), dash(n.GetRegion()), joinHostPort(n.GetHost(), n.GetPort()), role, timeline, formatLSN(lsn), lag,
			formatVotes(s.GetVotes())}
		if len(keepers) > 0 {
			cells = append(cells, dash(keeperState[n.GetName()]))
		}
		t.row(cells...)
	}
	return t.flush()
}

// formatVotes prints each witness's reachability vote, sorted by witness: "w1✓ w2✓ w3✗".
func formatVotes(votes []*regentv1.Vote) string {
	if len(votes) == 0 {
		return "-"
	}
	vs := append([]*regentv1.Vote(nil), votes...)
	sort.SliceStable(vs, func(i, j int) bool { return vs[i].GetWitness() < vs[j].GetWitness() })
	parts := make([]string, len(vs))
	for i, v := range vs {
		mark := "✗"
		if v.GetReachable() {
			mark = "✓"
		}
		parts[i] = v.GetWitness() + mark
	}
	return strings.Join(parts, " ")
}

// printChannels writes the replication channels table, sorted by cluster then id.
func printChannels(w io.Writer, channels []*regentv1.ReplicationChannel, now time.Time) error {
	cs := append([]*regentv1.ReplicationChannel(nil), channels...)
	sort.SliceStable(cs, func(i, j int) bool {
		if cs[i].GetCluster() != cs[j].GetCluster() {
			return cs[i].GetCluster() < cs[j].GetCluster()
		}
		return cs[i].GetId() < cs[j].GetId()
	})
	t := newTable(w, "ID", "CLUSTER", "PRIMARY", "SECONDARY", "STATUS", "LAG", "EST_LAG", "BEHIND",
		"PRIMARY_LSN", "APPLY_LSN", "LAST_SEEN")
	for _, c := range cs {
		t.row(strconv.FormatUint(c.GetId(), 10), dash(c.GetCluster()), dash(c.GetPrimaryRegion()),
			dash(c.GetSecondaryRegion()), channelStatusName(c.GetStatus()),
			formatSeconds(float64(c.GetLagSeconds())), formatSeconds(c.GetEstimatedLagSeconds()),
			formatBytes(c.GetLagBytes()), formatLSN(c.GetPrimaryLsn()), formatLSN(c.GetApplyLsn()),
			age(c.GetLastSeenAt(), now))
	}
	return t.flush()
}

func sortedEvents(events []*regentv1.FailoverEvent) []*regentv1.FailoverEvent {
	es := append([]*regentv1.FailoverEvent(nil), events...)
	sort.SliceStable(es, func(i, j int) bool { return es[i].GetId() < es[j].GetId() })
	return es
}

// printEvents writes the failover events table, oldest first (status shows it; events prints
// detail blocks).
func printEvents(w io.Writer, events []*regentv1.FailoverEvent, now time.Time) error {
	t := newTable(w, "ID", "CLUSTER", "FROM", "TO", "STEP", "STARTED", "TOOK", "FENCE", "DATA_LOSS", "DNS", "REASON")
	for _, e := range events {
		took := "-"
		switch {
		case set(e.GetStartedAt()) && set(e.GetCompletedAt()):
			took = formatDuration(e.GetCompletedAt().AsTime().Sub(e.GetStartedAt().AsTime()))
		case e.GetStep() != regentv1.FailoverStep_FAILOVER_STEP_COMPLETED &&
			e.GetStep() != regentv1.FailoverStep_FAILOVER_STEP_ABORTED:
			took = "running"
		}
		reason := dash(e.GetTriggerReason())
		if e.GetManual() {
			reason = "manual: " + reason
		}
		if e.GetAbortReason() != "" {
			reason += "; aborted: " + e.GetAbortReason()
		}
		t.row(strconv.FormatUint(e.GetId(), 10), dash(e.GetCluster()),
			nodeAt(e.GetFromNode(), e.GetFromRegion()), nodeAt(e.GetToNode(), e.GetToRegion()),
			stepName(e.GetStep()), age(e.GetStartedAt(), now), took, dash(e.GetFenceMethod()), dataLoss(e),
			dnsShort(e), reason)
	}
	return t.flush()
}

// nodeAt prints "pg1 (eu-west)", or whichever half is known.
func nodeAt(node, region string) string {
	switch {
	case node == "" && region == "":
		return "-"
	case node == "":
		return region
	case region == "":
		return node
	}
	return node + " (" + region + ")"
}

// dataLoss prints the event's data loss: "unknown" while unset, "~1.0 KiB (est.)" while
// estimated, "0 B" once measured.
func dataLoss(e *regentv1.FailoverEvent) string {
	if e.DataLossBytes == nil {
		return "unknown"
	}
	s := lossBytes(e.GetDataLossBytes())
	if e.GetDataLossExact() {
		return s
	}
	return "~" + s + " (est.)"
}

// lossBytes prints a data loss figure in bytes; a negative one (never expected) as is.
func lossBytes(n int64) string {
	if n < 0 {
		return strconv.FormatInt(n, 10) + " B"
	}
	return formatBytes(uint64(n))
}

// joinHostPort prints host:port, leaving out what is unknown.
func joinHostPort(host string, port uint32) string {
	switch {
	case host == "" && port == 0:
		return "-"
	case port == 0:
		return host
	}
	if strings.Contains(host, ":") { // IPv6 literal
		host = "[" + host + "]"
	}
	return host + ":" + strconv.FormatUint(uint64(port), 10)
}
