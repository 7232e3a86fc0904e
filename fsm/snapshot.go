package fsm

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"slices"
	"strings"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// Snapshot format (all integers big-endian):
//
//	header   "REGENTSNAP" | uint32 format version | uint64 applied index
//	records  uint8 kind | uvarint length | length bytes of a deterministic protobuf message
//	trailer  uint8 recEnd | uint32 CRC-32C of every byte before the checksum
//
// Records come in kind order: one recMeta (a State holding only removed_member_ids and the
// id counters), then clusters, members, channels, failover events and audit records, each
// kind sorted by its key.

// SnapshotMagic opens every regent snapshot.
const SnapshotMagic = "REGENTSNAP"

// SnapshotVersion is the snapshot format this build writes and the only one it reads.
const SnapshotVersion uint32 = 1

// maxRecord bounds one record so that a corrupt length cannot make Restore allocate wildly.
const maxRecord = 64 << 20

// ErrBadSnapshot is wrapped by every error of ReadSnapshot and Restore about the snapshot's
// content: wrong magic, unknown version, truncation, bad checksum, bad records.
var ErrBadSnapshot = errors.New("bad snapshot")

const (
	recEnd byte = iota
	recMeta
	recCluster
	recMember
	recChannel
	recFailoverEvent
	recAudit
)

var recNames = map[byte]string{recEnd: "end", recMeta: "meta", recCluster: "cluster", recMember: "member",
	recChannel: "channel", recFailoverEvent: "failover event", recAudit: "audit record"}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Snapshot captures a copy of the state under the read lock; Persist writes it out without
// holding any lock, so Apply continues meanwhile.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	st, idx := f.State()
	return &fsmSnapshot{state: st, index: idx}, nil
}

type fsmSnapshot struct {
	state *regentv1.State
	index uint64
}

// Persist writes the snapshot to sink and closes it, or cancels it on error.
func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := WriteSnapshot(sink, s.state, s.index); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("writing fsm snapshot at index %d: %w", s.index, err)
	}
	if err := sink.Close(); err != nil {
		return fmt.Errorf("closing fsm snapshot at index %d: %w", s.index, err)
	}
	return nil
}

// Release does nothing: the snapshot owns a private copy of the state.
func (s *fsmSnapshot) Release() {}

// Restore replaces the whole state with the snapshot read from rc, and closes rc. It reads
// and checks the complete snapshot first; on any error the current state is left untouched.
// The change history is reset, so watchers following from an older index get a full state.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	st, idx, err := ReadSnapshot(rc)
	if err != nil {
		return fmt.Errorf("restoring fsm: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.state = st
	f.applied = idx
	f.changes.reset(idx + 1)
	f.notifyLocked()
	return nil
}

// WriteSnapshot writes s, as of Raft index index, in the snapshot format. s must be in the
// FSM's canonical form (every list sorted by its key), as State() returns it; the output is
// then the same bytes on every node.
func WriteSnapshot(w io.Writer, s *regentv1.State, index uint64) error {
	bw := bufio.NewWriter(w)
	crc := crc32.New(castagnoli)
	out := io.MultiWriter(bw, crc)

	var hdr [len(SnapshotMagic) + 4 + 8]byte
	copy(hdr[:], SnapshotMagic)
	binary.BigEndian.PutUint32(hdr[len(SnapshotMagic):], SnapshotVersion)
	binary.BigEndian.PutUint64(hdr[len(SnapshotMagic)+4:], index)
	if _, err := out.Write(hdr[:]); err != nil {
		return err
	}
	var lenbuf [binary.MaxVarintLen64]byte
	buf := make([]byte, 0, 4096)
	record := func(kind byte, m proto.Message) error {
		var err error
		buf, err = deterministic.MarshalAppend(buf[:0], m)
		if err != nil {
			return fmt.Errorf("encoding %s record: %w", recNames[kind], err)
		}
		n := binary.PutUvarint(lenbuf[:], uint64(len(buf)))
		if _, err := out.Write([]byte{kind}); err != nil {
			return err
		}
		if _, err := out.Write(lenbuf[:n]); err != nil {
			return err
		}
		_, err = out.Write(buf)
		return err
	}
	meta := &regentv1.State{RemovedMemberIds: s.GetRemovedMemberIds(), NextChannelId: s.GetNextChannelId(),
		NextEventId: s.GetNextEventId(), NextAuditId: s.GetNextAuditId()}
	if err := record(recMeta, meta); err != nil {
		return err
	}
	for _, c := range s.GetClusters() {
		if err := record(recCluster, c); err != nil {
			return err
		}
	}
	for _, m := range s.GetMembers() {
		if err := record(recMember, m); err != nil {
			return err
		}
	}
	for _, c := range s.GetChannels() {
		if err := record(recChannel, c); err != nil {
			return err
		}
	}
	for _, e := range s.GetFailoverEvents() {
		if err := record(recFailoverEvent, e); err != nil {
			return err
		}
	}
	for _, a := range s.GetAudit() {
		if err := record(recAudit, a); err != nil {
			return err
		}
	}
	if _, err := out.Write([]byte{recEnd}); err != nil {
		return err
	}
	var sum [4]byte
	binary.BigEndian.PutUint32(sum[:], crc.Sum32())
	if _, err := bw.Write(sum[:]); err != nil {
		return err
	}
	return bw.Flush()
}

// crcReader feeds every byte it reads into a checksum.
type crcReader struct {
	r   *bufio.Reader
	crc hash.Hash32
}

func (c *crcReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.crc.Write(p[:n])
	return n, err
}

func (c *crcReader) ReadByte() (byte, error) {
	b, err := c.r.ReadByte()
	if err == nil {
		c.crc.Write([]byte{b})
	}
	return b, err
}

// ReadSnapshot reads a whole snapshot written by WriteSnapshot and checks it: magic, format
// version, checksum, record kinds and order, and that ids are below their counters. It
// returns the state and the applied index of the header. Errors wrap ErrBadSnapshot (or are
// the reader's own I/O errors) and say what is wrong.
func ReadSnapshot(r io.Reader) (*regentv1.State, uint64, error) {
	cr := &crcReader{r: bufio.NewReader(r), crc: crc32.New(castagnoli)}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrBadSnapshot, fmt.Sprintf(format, args...))
	}
	eof := func(what string, err error) error {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return bad("truncated while reading %s", what)
		}
		return fmt.Errorf("reading snapshot %s: %w", what, err)
	}

	var hdr [len(SnapshotMagic) + 4 + 8]byte
	if _, err := io.ReadFull(cr, hdr[:len(SnapshotMagic)]); err != nil {
		return nil, 0, eof("header", err)
	}
	if magic := hdr[:len(SnapshotMagic)]; !bytes.Equal(magic, []byte(SnapshotMagic)) {
		return nil, 0, bad("not a regent snapshot: starts with %q, want %q", magic, SnapshotMagic)
	}
	if _, err := io.ReadFull(cr, hdr[len(SnapshotMagic):]); err != nil {
		return nil, 0, eof("header", err)
	}
	if v := binary.BigEndian.Uint32(hdr[len(SnapshotMagic):]); v != SnapshotVersion {
		return nil, 0, bad("snapshot format version %d is not supported (this regent reads version %d); run the regent version that wrote it, or a newer one",
			v, SnapshotVersion)
	}
	index := binary.BigEndian.Uint64(hdr[len(SnapshotMagic)+4:])

	st := &regentv1.State{}
	haveMeta := false
	lastKind := recMeta
	var buf []byte
	for n := 1; ; n++ {
		kind, err := cr.ReadByte()
		if err != nil {
			return nil, 0, eof(fmt.Sprintf("record %d", n), err)
		}
		if kind == recEnd {
			break
		}
		name, known := recNames[kind]
		if !known {
			return nil, 0, bad("record %d has unknown kind %d", n, kind)
		}
		if kind < lastKind || (kind == recMeta && haveMeta) || (kind != recMeta && !haveMeta) {
			return nil, 0, bad("record %d (%s) is out of order", n, name)
		}
		lastKind = kind
		size, err := binary.ReadUvarint(cr)
		if err != nil {
			return nil, 0, eof(fmt.Sprintf("record %d (%s) length", n, name), err)
		}
		if size > maxRecord {
			return nil, 0, bad("record %d (%s) claims %d bytes, more than the %d allowed", n, name, size, maxRecord)
		}
		buf = slices.Grow(buf[:0], int(size))[:size]
		if _, err := io.ReadFull(cr, buf); err != nil {
			return nil, 0, eof(fmt.Sprintf("record %d (%s)", n, name), err)
		}
		var m proto.Message
		switch kind {
		case recMeta:
			m = st
			haveMeta = true
		case recCluster:
			c := &regentv1.Cluster{}
			st.Clusters, m = append(st.Clusters, c), c
		case recMember:
			c := &regentv1.Member{}
			st.Members, m = append(st.Members, c), c
		case recChannel:
			c := &regentv1.ReplicationChannel{}
			st.Channels, m = append(st.Channels, c), c
		case recFailoverEvent:
			c := &regentv1.FailoverEvent{}
			st.FailoverEvents, m = append(st.FailoverEvents, c), c
		case recAudit:
			c := &regentv1.AuditRecord{}
			st.Audit, m = append(st.Audit, c), c
		}
		if err := proto.Unmarshal(buf, m); err != nil {
			return nil, 0, bad("record %d (%s) does not decode: %v", n, name, err)
		}
		if kind == recMeta && (len(st.Clusters)+len(st.Members)+len(st.Channels)+len(st.FailoverEvents)+len(st.Audit) > 0) {
			return nil, 0, bad("record %d (meta) holds objects; they belong in their own records", n)
		}
	}
	want := cr.crc.Sum32()
	var sum [4]byte
	if _, err := io.ReadFull(cr.r, sum[:]); err != nil {
		return nil, 0, eof("checksum", err)
	}
	if got := binary.BigEndian.Uint32(sum[:]); got != want {
		return nil, 0, bad("checksum mismatch (stored %08x, computed %08x): the file is damaged", got, want)
	}
	if _, err := cr.r.ReadByte(); err == nil {
		return nil, 0, bad("unexpected data after the end of the snapshot")
	} else if !errors.Is(err, io.EOF) {
		return nil, 0, fmt.Errorf("reading snapshot: %w", err)
	}
	if !haveMeta {
		return nil, 0, bad("no meta record")
	}
	if err := checkState(st); err != nil {
		return nil, 0, fmt.Errorf("%w: %v", ErrBadSnapshot, err)
	}
	return st, index, nil
}

// checkState verifies the canonical-form invariants Apply relies on: every list sorted by a
// unique key, and ids below their counters.
func checkState(s *regentv1.State) error {
	if err := sortedUnique("clusters", s.Clusters, func(c *regentv1.Cluster) string { return c.GetName() }); err != nil {
		return err
	}
	if err := sortedUnique("members", s.Members, func(m *regentv1.Member) string { return m.GetName() }); err != nil {
		return err
	}
	if err := sortedUnique("removed member ids", s.RemovedMemberIds, func(id string) string { return id }); err != nil {
		return err
	}
	if err := idsBelow("channels", s.Channels, (*regentv1.ReplicationChannel).GetId, s.NextChannelId); err != nil {
		return err
	}
	if err := idsBelow("failover events", s.FailoverEvents, (*regentv1.FailoverEvent).GetId, s.NextEventId); err != nil {
		return err
	}
	if err := idsBelow("audit records", s.Audit, (*regentv1.AuditRecord).GetId, s.NextAuditId); err != nil {
		return err
	}
	for _, c := range s.Clusters {
		if err := sortedUnique(fmt.Sprintf("node status of cluster %q", c.GetName()), c.NodeStatus,
			func(n *regentv1.NodeStatus) string { return n.GetName() }); err != nil {
			return err
		}
		for _, n := range c.NodeStatus {
			if err := sortedUnique(fmt.Sprintf("votes on node %q of cluster %q", n.GetName(), c.GetName()), n.Votes,
				func(v *regentv1.Vote) string { return v.GetWitness() }); err != nil {
				return err
			}
		}
	}
	// UPDATE_CHANNELS upserts by (cluster, primary region, secondary region), so that key
	// must name one channel.
	seen := make(map[channelKey]uint64, len(s.Channels))
	for _, ch := range s.Channels {
		if id, dup := seen[keyOf(ch)]; dup {
			return fmt.Errorf("channels %d and %d are both %s", id, ch.GetId(), keyOf(ch))
		}
		seen[keyOf(ch)] = ch.GetId()
	}
	return nil
}

func sortedUnique[T any](what string, xs []T, key func(T) string) error {
	for i := 1; i < len(xs); i++ {
		if a, b := key(xs[i-1]), key(xs[i]); strings.Compare(a, b) >= 0 {
			return fmt.Errorf("%s are not sorted by unique key: %q comes before %q", what, a, b)
		}
	}
	return nil
}

func idsBelow[T any](what string, xs []T, id func(T) uint64, next uint64) error {
	for i, x := range xs {
		if id(x) == 0 || id(x) >= next {
			return fmt.Errorf("%s: id %d is not between 1 and the next id %d", what, id(x), next)
		}
		if i > 0 && id(xs[i-1]) >= id(x) {
			return fmt.Errorf("%s are not sorted by unique id: %d comes before %d", what, id(xs[i-1]), id(x))
		}
	}
	return nil
}
