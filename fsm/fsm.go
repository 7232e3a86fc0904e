// Package fsm is regent's replicated state machine: the hashicorp/raft FSM that applies
// command envelopes to a *regentv1.State, takes and restores versioned snapshots, and keeps a
// short history of changes for Watch streams. See DESIGN.md in this directory.
//
// Apply is deterministic: it reads no clock, no randomness and does no I/O; every time it
// stores comes from the command envelope, and every id from counters in the state. Readers
// get deep copies, so nothing they do can change the state.
package fsm

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// Sentinel errors returned in Result.Err by rejected commands. A rejected command changes
// nothing. Validation failures wrap spec.ErrInvalid (and carry *spec.FieldError values).
var (
	// ErrNotFound: the command names a cluster, member or failover event that does not
	// exist.
	ErrNotFound = errors.New("not found")
	// ErrRemoved: the witness id was removed by an operator and is not re-added
	// automatically.
	ErrRemoved = errors.New("member was removed by an operator")
	// ErrConflict: the command is well formed but conflicts with the current state (for
	// example a spec that drops the node that is currently primary, a second failover of a
	// cluster while one runs, or a saga step from a stale leader's term).
	ErrConflict = errors.New("conflicts with the current state")
)

// MaxAuditRecords is how many audit records the state keeps. When an append goes over it,
// the oldest records (lowest ids) are dropped; ids keep counting up. The drop is part of
// Apply, so it is the same on every node, and it is not reported to watchers.
const MaxAuditRecords = 10000

// Result is what Apply returns for a command entry (raft hands it to the proposer as
// ApplyFuture.Response()).
type Result struct {
	// Index is the Raft index of the entry.
	Index uint64
	// Err is nil when the command was applied, else why it was rejected; a rejected
	// command changed nothing. Match it with errors.Is against ErrNotFound, ErrRemoved,
	// ErrConflict or spec.ErrInvalid.
	Err error
	// Created is true when the command created its object (a cluster or a member) rather
	// than updating one.
	Created bool
	// Warnings are things the operator should know about an applied command.
	Warnings []string
	// Cluster is a copy of the cluster after an APPLY_CLUSTER or SET_PAUSED command.
	Cluster *regentv1.Cluster
	// Event is a copy of the failover event after a START_FAILOVER command (the new event,
	// with its id) or an ADVANCE_FAILOVER command (also when the command repeated the
	// current step and changed nothing).
	Event *regentv1.FailoverEvent
}

// FSM is the replicated state machine. Create it with New. It implements raft.FSM; its read
// methods are safe to call concurrently with Apply.
type FSM struct {
	mu      sync.RWMutex
	state   *regentv1.State
	applied uint64
	changes ring
	// changed is closed, and replaced, at every Apply and Restore.
	changed chan struct{}
}

var _ raft.FSM = (*FSM)(nil)

// New returns an FSM with an empty state at applied index 0.
func New() *FSM {
	return &FSM{
		state:   &regentv1.State{},
		changes: newRing(RingSize, 1),
		changed: make(chan struct{}),
	}
}

// Apply applies one committed log entry and returns a *Result. Entries of other types than
// raft.LogCommand change nothing (not even the applied index). An entry whose data does not
// decode (Decode fails) can only come from a bug, since the leader proposes only what it
// encoded: Apply panics rather than let replicas diverge.
func (f *FSM) Apply(l *raft.Log) interface{} {
	if l.Type != raft.LogCommand {
		return &Result{Index: l.Index}
	}
	cmd, payload, err := Decode(l.Data)
	if err != nil {
		panic(fmt.Sprintf("fsm: raft log entry %d (term %d) cannot be applied: %v", l.Index, l.Term, err))
	}
	h := handlers[cmd.GetType()]

	f.mu.Lock()
	defer f.mu.Unlock()
	tx := &txn{state: f.state, index: l.Index, at: cmd.GetAt(), actor: cmd.GetActor(), res: &Result{Index: l.Index}}
	if err := h.apply(tx, payload); err != nil {
		// Handlers check everything before they change anything, so a rejected command
		// leaves no trace beyond the applied index.
		tx.res = &Result{Index: l.Index, Err: err}
	} else {
		f.changes.add(tx.events)
	}
	f.applied = l.Index
	f.notifyLocked()
	return tx.res
}

func (f *FSM) notifyLocked() {
	close(f.changed)
	f.changed = make(chan struct{})
}

// AppliedIndex returns the Raft index of the last entry applied (or restored from a
// snapshot).
func (f *FSM) AppliedIndex() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.applied
}

// State returns a deep copy of the whole state and the index it reflects.
func (f *FSM) State() (*regentv1.State, uint64) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return proto.Clone(f.state).(*regentv1.State), f.applied
}

// Cluster returns a copy of the named cluster.
func (f *FSM) Cluster(name string) (*regentv1.Cluster, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	i, ok := findCluster(f.state, name)
	if !ok {
		return nil, false
	}
	return proto.Clone(f.state.Clusters[i]).(*regentv1.Cluster), true
}

// Clusters returns copies of all clusters, sorted by name.
func (f *FSM) Clusters() []*regentv1.Cluster {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]*regentv1.Cluster, len(f.state.Clusters))
	for i, c := range f.state.Clusters {
		out[i] = proto.Clone(c).(*regentv1.Cluster)
	}
	return out
}

// Member returns a copy of the witness with that name.
func (f *FSM) Member(name string) (*regentv1.Member, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	i, ok := findMember(f.state, name)
	if !ok {
		return nil, false
	}
	return proto.Clone(f.state.Members[i]).(*regentv1.Member), true
}

// OpenFailover returns a copy of the cluster's failover event that is neither completed nor
// aborted (there is at most one), without copying the rest of the state.
func (f *FSM) OpenFailover(cluster string) (*regentv1.FailoverEvent, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	for i := len(f.state.FailoverEvents) - 1; i >= 0; i-- {
		ev := f.state.FailoverEvents[i]
		if ev.GetCluster() != cluster {
			continue
		}
		if s := ev.GetStep(); s != regentv1.FailoverStep_FAILOVER_STEP_COMPLETED && s != regentv1.FailoverStep_FAILOVER_STEP_ABORTED {
			return proto.Clone(ev).(*regentv1.FailoverEvent), true
		}
	}
	return nil, false
}

// MemberByID returns a copy of the witness with that id (its Raft server ID).
func (f *FSM) MemberByID(id string) (*regentv1.Member, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if m := memberByID(f.state, id); m != nil {
		return proto.Clone(m).(*regentv1.Member), true
	}
	return nil, false
}

// Members returns copies of all witnesses, sorted by name.
func (f *FSM) Members() []*regentv1.Member {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]*regentv1.Member, len(f.state.Members))
	for i, m := range f.state.Members {
		out[i] = proto.Clone(m).(*regentv1.Member)
	}
	return out
}

// IsRemoved reports whether an operator removed the witness with this id.
func (f *FSM) IsRemoved(id string) bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	_, ok := slices.BinarySearch(f.state.RemovedMemberIds, id)
	return ok
}

// WaitForIndex blocks until the applied index is at least idx, or ctx ends (then it returns
// an error wrapping ctx.Err()).
func (f *FSM) WaitForIndex(ctx context.Context, idx uint64) error {
	for {
		f.mu.RLock()
		applied, ch := f.applied, f.changed
		f.mu.RUnlock()
		if applied >= idx {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for index %d (applied %d): %w", idx, applied, ctx.Err())
		case <-ch:
		}
	}
}

// txn is the context of one command being applied: the live state (handlers check before
// they change it), the entry's index and envelope, the result being built and the changes
// to publish to watchers.
type txn struct {
	state  *regentv1.State
	index  uint64
	at     *timestamppb.Timestamp
	actor  string
	res    *Result
	events []*regentv1.WatchEvent
}

// now returns a fresh copy of the envelope's time, so no two messages share it.
func (tx *txn) now() *timestamppb.Timestamp {
	return proto.Clone(tx.at).(*timestamppb.Timestamp)
}

func (tx *txn) emit(ev *regentv1.WatchEvent) {
	ev.Index = tx.index
	tx.events = append(tx.events, ev)
}

// audit appends an audit record with the next id, the envelope's time and actor.
func (tx *txn) audit(action, target, detail string) {
	s := tx.state
	if s.NextAuditId == 0 {
		s.NextAuditId = 1
	}
	rec := &regentv1.AuditRecord{Id: s.NextAuditId, At: tx.now(), Actor: tx.actor, Action: action,
		Target: target, Detail: detail}
	s.NextAuditId++
	s.Audit = append(s.Audit, rec)
	if over := len(s.Audit) - MaxAuditRecords; over > 0 {
		// Re-slicing instead of shifting keeps this O(1): append copies the window to a
		// new array only when the old one fills up. Clearing lets the dropped records go.
		clear(s.Audit[:over])
		s.Audit = s.Audit[over:]
	}
	tx.emit(&regentv1.WatchEvent{Kind: KindAudit, Key: fmt.Sprint(rec.Id),
		Audit: proto.Clone(rec).(*regentv1.AuditRecord)})
}

func findCluster(s *regentv1.State, name string) (int, bool) {
	return slices.BinarySearchFunc(s.Clusters, name, func(c *regentv1.Cluster, n string) int {
		return strings.Compare(c.GetName(), n)
	})
}

func findMember(s *regentv1.State, name string) (int, bool) {
	return slices.BinarySearchFunc(s.Members, name, func(m *regentv1.Member, n string) int {
		return strings.Compare(m.GetName(), n)
	})
}

func memberByID(s *regentv1.State, id string) *regentv1.Member {
	for _, m := range s.Members {
		if m.GetId() == id {
			return m
		}
	}
	return nil
}
