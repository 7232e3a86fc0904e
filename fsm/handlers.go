package fsm

import (
	"fmt"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
	"github.com/regentdb/regent/spec"
)

// Every handler first checks everything that can make it reject the command, then changes
// the state; a returned error therefore means nothing was changed.

// applyCluster creates a cluster from a spec, or updates an existing one.
func applyCluster(tx *txn, cmd *regentv1.ApplyClusterCommand) error {
	if cmd.GetSpec() == nil {
		return &spec.FieldError{Field: "spec", Msg: "the apply command carries no cluster spec"}
	}
	sp := proto.Clone(cmd.GetSpec()).(*regentv1.ClusterSpec)
	sp.Policy = spec.WithDefaults(sp.GetPolicy())
	if err := spec.Validate(sp); err != nil {
		return fmt.Errorf("cluster %q: %w", sp.GetName(), err)
	}
	s := tx.state
	i, found := findCluster(s, sp.GetName())

	if !found {
		c := &regentv1.Cluster{
			Name:        sp.GetName(),
			Primary:     sp.GetPrimary(),
			Nodes:       sp.GetNodes(),
			Policy:      sp.GetPolicy(),
			Dns:         sp.GetDns(),
			NodeStatus:  nodeStatus(nil, sp.GetNodes()),
			SpecVersion: 1,
			LeaseEpoch:  1,
			CreatedAt:   tx.now(),
			UpdatedAt:   tx.now(),
		}
		s.Clusters = slices.Insert(s.Clusters, i, c)
		tx.res.Created = true
		tx.res.Cluster = proto.Clone(c).(*regentv1.Cluster)
		tx.emit(&regentv1.WatchEvent{Kind: KindCluster, Key: c.Name, Cluster: proto.Clone(c).(*regentv1.Cluster)})
		tx.audit("cluster.apply", c.Name, fmt.Sprintf("created with %d nodes, primary %s (spec version 1)", len(c.Nodes), c.Primary))
		return nil
	}

	c := s.Clusters[i]
	if !slices.ContainsFunc(sp.GetNodes(), func(n *regentv1.NodeSpec) bool { return n.GetName() == c.GetPrimary() }) {
		return fmt.Errorf("cluster %q: the spec drops node %q, which is the current primary: %w; switch over to another node first, then remove it",
			c.GetName(), c.GetPrimary(), ErrConflict)
	}
	if ev := openEvent(s, c.GetName()); ev != nil {
		for _, n := range []string{ev.GetFromNode(), ev.GetToNode()} {
			if !slices.ContainsFunc(sp.GetNodes(), func(ns *regentv1.NodeSpec) bool { return ns.GetName() == n }) {
				return fmt.Errorf("cluster %q: the spec drops node %q, which takes part in failover %d (at step %s): %w; apply it again once the failover has completed or aborted",
					c.GetName(), n, ev.GetId(), StepName(ev.GetStep()), ErrConflict)
			}
		}
	}
	if sp.GetPrimary() != c.GetPrimary() {
		tx.res.Warnings = append(tx.res.Warnings, fmt.Sprintf(
			"primary stays %s (set by failover or switchover); the spec's primary (%s) is only used when a cluster is created",
			c.GetPrimary(), sp.GetPrimary()))
	}
	c.Nodes = sp.GetNodes()
	c.Policy = sp.GetPolicy()
	c.Dns = sp.GetDns()
	c.NodeStatus = nodeStatus(c.GetNodeStatus(), sp.GetNodes())
	c.SpecVersion++
	c.UpdatedAt = tx.now()
	tx.res.Cluster = proto.Clone(c).(*regentv1.Cluster)
	tx.emit(&regentv1.WatchEvent{Kind: KindCluster, Key: c.Name, Cluster: proto.Clone(c).(*regentv1.Cluster)})
	tx.audit("cluster.apply", c.Name, fmt.Sprintf("updated to spec version %d (%d nodes)", c.SpecVersion, len(c.Nodes)))
	return nil
}

// nodeStatus returns one status per node, sorted by name: the old status of nodes that stay,
// a fresh one (role unknown) for new nodes.
func nodeStatus(old []*regentv1.NodeStatus, nodes []*regentv1.NodeSpec) []*regentv1.NodeStatus {
	out := make([]*regentv1.NodeStatus, 0, len(nodes))
	for _, n := range nodes {
		var st *regentv1.NodeStatus
		for _, o := range old {
			if o.GetName() == n.GetName() {
				st = o
				break
			}
		}
		if st == nil {
			st = &regentv1.NodeStatus{Name: n.GetName(), Role: regentv1.NodeRole_NODE_ROLE_UNKNOWN}
		}
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b *regentv1.NodeStatus) int { return strings.Compare(a.GetName(), b.GetName()) })
	return out
}

// deleteCluster removes a cluster and its replication channels. Failover events stay: they
// are history. A cluster whose failover still runs cannot be deleted: after promotion the
// saga can only finish, and it needs the cluster to do so.
func deleteCluster(tx *txn, cmd *regentv1.DeleteClusterCommand) error {
	s := tx.state
	i, found := findCluster(s, cmd.GetName())
	if !found {
		return fmt.Errorf("cluster %q: %w; list clusters with `regent status`", cmd.GetName(), ErrNotFound)
	}
	c := s.Clusters[i]
	if ev := openEvent(s, c.GetName()); ev != nil {
		return fmt.Errorf("cluster %q: failover %d is still at step %s: %w; delete the cluster once it has completed or aborted",
			c.GetName(), ev.GetId(), StepName(ev.GetStep()), ErrConflict)
	}
	s.Clusters = slices.Delete(s.Clusters, i, i+1)
	tx.emit(&regentv1.WatchEvent{Kind: KindCluster, Key: c.GetName(), Deleted: true, Cluster: c})

	kept := s.Channels[:0]
	for _, ch := range s.Channels {
		if ch.GetCluster() == c.GetName() {
			tx.emit(&regentv1.WatchEvent{Kind: KindChannel, Key: fmt.Sprint(ch.GetId()), Deleted: true, Channel: ch})
			continue
		}
		kept = append(kept, ch)
	}
	clear(s.Channels[len(kept):])
	s.Channels = kept

	tx.audit("cluster.delete", c.GetName(), fmt.Sprintf("deleted at spec version %d", c.GetSpecVersion()))
	return nil
}

// upsertMember records a witness's addresses, inserting it or updating it by name.
func upsertMember(tx *txn, cmd *regentv1.UpsertMemberCommand) error {
	m := cmd.GetMember()
	if m == nil {
		return &spec.FieldError{Field: "member", Msg: "the upsert command carries no member"}
	}
	var errs []string
	for _, f := range []struct{ name, v string }{{"name", m.GetName()}, {"id", m.GetId()}, {"raft_addr", m.GetRaftAddr()}} {
		if strings.TrimSpace(f.v) == "" {
			errs = append(errs, f.name)
		}
	}
	if len(errs) > 0 {
		return &spec.FieldError{Field: "member." + errs[0], Msg: fmt.Sprintf("is required (missing: %s)", strings.Join(errs, ", "))}
	}
	s := tx.state
	if _, removed := slices.BinarySearch(s.RemovedMemberIds, m.GetId()); removed {
		return fmt.Errorf("witness %q (id %s): %w; to bring this host back, start it with an empty data_dir so it gets a new id",
			m.GetName(), m.GetId(), ErrRemoved)
	}
	if other := memberByID(s, m.GetId()); other != nil && other.GetName() != m.GetName() {
		return fmt.Errorf("witness %q: id %s already belongs to witness %q: %w; remove %q first or give this witness its own data_dir",
			m.GetName(), m.GetId(), other.GetName(), ErrConflict, other.GetName())
	}

	i, found := findMember(s, m.GetName())
	nm := proto.Clone(m).(*regentv1.Member)
	if found {
		nm.JoinedAt = s.Members[i].GetJoinedAt()
		if proto.Equal(nm, s.Members[i]) {
			return nil // nothing changed; nothing to tell watchers
		}
		s.Members[i] = nm
	} else {
		nm.JoinedAt = tx.now()
		s.Members = slices.Insert(s.Members, i, nm)
		tx.res.Created = true
	}
	tx.emit(&regentv1.WatchEvent{Kind: KindMember, Key: nm.GetName(), Member: proto.Clone(nm).(*regentv1.Member)})
	return nil
}

// removeMember forgets a witness and remembers its id so it is not re-added automatically.
func removeMember(tx *txn, cmd *regentv1.RemoveMemberCommand) error {
	s := tx.state
	i, found := findMember(s, cmd.GetName())
	if !found {
		return fmt.Errorf("witness %q: %w; list witnesses with `regent members`", cmd.GetName(), ErrNotFound)
	}
	m := s.Members[i]
	s.Members = slices.Delete(s.Members, i, i+1)
	if j, dup := slices.BinarySearch(s.RemovedMemberIds, m.GetId()); !dup {
		s.RemovedMemberIds = slices.Insert(s.RemovedMemberIds, j, m.GetId())
	}
	tx.emit(&regentv1.WatchEvent{Kind: KindMember, Key: m.GetName(), Deleted: true, Member: m})
	tx.audit("member.remove", m.GetName(), "id "+m.GetId())
	return nil
}

// recordAudit appends an operator action to the audit trail.
func recordAudit(tx *txn, cmd *regentv1.RecordAuditCommand) error {
	if strings.TrimSpace(cmd.GetAction()) == "" {
		return &spec.FieldError{Field: "action", Msg: "is required, e.g. \"failover.request\""}
	}
	tx.audit(cmd.GetAction(), cmd.GetTarget(), cmd.GetDetail())
	return nil
}
