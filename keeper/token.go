package keeper

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/regentdb/regent/internal/atomicfile"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// Token is a fencing token: the Raft term of the leader that issued an instruction and the
// failover event it belongs to. Tokens are ordered by term, then by event.
type Token struct {
	Term  uint64 `json:"term"`
	Event uint64 `json:"event_id"`
}

// TokenFromProto converts a wire token; nil is the zero token.
func TokenFromProto(t *regentv1.FencingToken) Token {
	return Token{Term: t.GetTerm(), Event: t.GetEventId()}
}

// Proto converts t to its wire form.
func (t Token) Proto() *regentv1.FencingToken {
	return &regentv1.FencingToken{Term: t.Term, EventId: t.Event}
}

// Compare returns -1, 0 or +1 as t is older than, equal to or newer than u.
func (t Token) Compare(u Token) int {
	if c := cmp.Compare(t.Term, u.Term); c != 0 {
		return c
	}
	return cmp.Compare(t.Event, u.Event)
}

// IsZero reports whether t is the zero token (nothing obeyed yet).
func (t Token) IsZero() bool { return t == Token{} }

// String returns "term T, event E".
func (t Token) String() string { return fmt.Sprintf("term %d, event %d", t.Term, t.Event) }

// FenceReason says why the keeper holds its server fenced.
type FenceReason string

// Fence reasons.
const (
	// FenceNone: the keeper holds no fence (the server may still be a standby, or fenced by
	// someone else).
	FenceNone FenceReason = ""
	// FenceLease: the lease lapsed (or could not be taken at start, or the keeper shut down
	// while holding it). Lifted when a majority of witnesses grants a renewal for the current
	// epoch naming this node, and none names another primary.
	FenceLease FenceReason = "lease"
	// FenceInstruction: the leader asked (KEEPER_ACTION_FENCE). Lifted only by UNFENCE,
	// PROMOTE, or by this node being designated primary at an epoch newer than Fence.Epoch.
	FenceInstruction FenceReason = "instruction"
)

// State is the keeper's durable state, kept in state_dir/keeper-state.json.
type State struct {
	// Highest is the newest fencing token the keeper has obeyed.
	Highest Token `json:"highest"`
	// LeaseEpoch is the last lease epoch the witnesses named this node primary for (0: none
	// known). It only saves a round trip at start; the witnesses are the truth.
	LeaseEpoch uint64 `json:"lease_epoch"`
	// Fence is the keeper's own fence, if any, and the lease epoch current when it was put on.
	Fence      FenceReason `json:"fence,omitempty"`
	FenceEpoch uint64      `json:"fence_epoch,omitempty"`
	// Stopped: a STOP instruction stopped PostgreSQL; the keeper does not start it until a
	// RESTART (or PROMOTE) instruction.
	Stopped bool `json:"stopped,omitempty"`
	// Rejoin is the last completed REJOIN's result (RejoinResult as JSON) and RejoinToken the
	// token it ran under: an equal token repeated answers it without redoing the rewind.
	Rejoin      string `json:"rejoin,omitempty"`
	RejoinToken Token  `json:"rejoin_token,omitzero"`
	// RejoinPartial is an unfinished REJOIN's figures (RejoinResult as JSON), saved after
	// measuring and again after the rewind, so that a rejoin interrupted after its rewind still
	// reports the loss measured before it. Cleared when a rejoin completes or on PROMOTE.
	RejoinPartial string `json:"rejoin_partial,omitempty"`
}

// stateFile is the name of the keeper's state file in state_dir.
const stateFile = "keeper-state.json"

// stateStore persists State atomically and durably (temp file, fsync, rename, fsync dir).
type stateStore struct {
	path string
	mu   sync.Mutex
	st   State
}

// openState reads dir's state file, or starts from the zero State when there is none. A
// corrupt file is an error: forgetting the highest token could let a stale leader act.
func openState(dir string) (*stateStore, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state_dir %s: %w; create it (mode 0700) or fix state_dir", dir, err)
	}
	s := &stateStore{path: filepath.Join(dir, stateFile)}
	b, err := os.ReadFile(s.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return s, nil
	case err != nil:
		return nil, fmt.Errorf("read keeper state: %w", err)
	}
	if err := json.Unmarshal(b, &s.st); err != nil {
		return nil, fmt.Errorf("%s is corrupt (%v): restore it from a backup; remove it only if no leader can still send an old instruction (the highest obeyed token would be forgotten)", s.path, err)
	}
	return s, nil
}

// Get returns the current state.
func (s *stateStore) Get() State {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st
}

// Update applies f to a copy of the state and persists it; the in-memory state changes only
// once the file is durably written. A no-op change writes nothing.
func (s *stateStore) Update(f func(*State)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := s.st
	f(&next)
	if next == s.st {
		return nil
	}
	b, err := json.MarshalIndent(next, "", "  ")
	if err != nil {
		return fmt.Errorf("encode keeper state: %w", err)
	}
	if err := atomicfile.Write(s.path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("write keeper state %s: %w; check that state_dir is writable and not full", s.path, err)
	}
	s.st = next
	return nil
}

// ErrStaleToken: an instruction carried a token older than the highest obeyed one.
var ErrStaleToken = errors.New("keeper: stale fencing token")

// checkToken decides whether an instruction with token got may be obeyed when highest is the
// newest obeyed: a newer token is obeyed, an equal one is an idempotent repeat, an older one
// is refused (it comes from a deposed leader or an earlier event).
func checkToken(got, highest Token) error {
	if got.Compare(highest) < 0 {
		return fmt.Errorf("%w: the instruction's token (%s) is older than the highest this keeper has obeyed (%s); it comes from a deposed leader or an earlier event, so it is refused", ErrStaleToken, got, highest)
	}
	return nil
}
