package fsm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

func replay(t *testing.T, f *FSM, log []entry) {
	t.Helper()
	for _, e := range log {
		applyNext(t, f, e)
	}
}

// TestReplayIsDeterministic: the same log, rejected entries included, gives byte-identical
// snapshots on two FSMs, and on a third that restored a snapshot half way.
func TestReplayIsDeterministic(t *testing.T) {
	// The generator must exercise the observation commands, not only send them.
	var votes, facts, channels, channelDeletes, paused, refusals, events, promoted, ended, takeovers int
	defer func() {
		if votes == 0 || facts == 0 || channels == 0 || channelDeletes == 0 {
			t.Errorf("generated logs left %d votes, %d observed nodes, %d channels, %d channel deletions; want all > 0",
				votes, facts, channels, channelDeletes)
		}
		t.Logf("generated: %d votes, %d observed nodes, %d channels, %d channel deletions, %d paused, %d refusals, %d failover events (%d promoted, %d ended, %d taken over)",
			votes, facts, channels, channelDeletes, paused, refusals, events, promoted, ended, takeovers)
		if paused == 0 || refusals == 0 || events == 0 || promoted == 0 || ended == 0 || takeovers == 0 {
			t.Errorf("generated logs left %d paused clusters, %d refusals, %d failover events (%d promoted, %d ended, %d taken over); want all > 0",
				paused, refusals, events, promoted, ended, takeovers)
		}
	}()
	for seed := uint64(1); seed <= 20; seed++ {
		log := genLog(rand.New(rand.NewPCG(seed, 42)), 400)
		a, b := New(), New()
		rejected := 0
		for i, e := range log {
			ra := applyNext(t, a, e)
			rb := applyNext(t, b, e)
			if (ra.Err == nil) != (rb.Err == nil) || ra.Created != rb.Created || len(ra.Warnings) != len(rb.Warnings) {
				t.Fatalf("seed %d entry %d: results differ: %+v vs %+v", seed, i, ra, rb)
			}
			if ra.Err != nil {
				rejected++
			}
		}
		if rejected == 0 || rejected == len(log) {
			t.Fatalf("seed %d: %d of %d entries rejected; the generator should mix both", seed, rejected, len(log))
		}
		st, _ := a.State()
		channels += len(st.Channels)
		events += len(st.FailoverEvents)
		for _, ev := range st.FailoverEvents {
			if len(ev.Steps) >= 3 && ev.Steps[2].Step == regentv1.FailoverStep_FAILOVER_STEP_PROMOTED {
				promoted++
			}
			if !isOpen(ev) {
				ended++
			}
			if ev.Term > 1 {
				takeovers++
			}
		}
		for _, c := range st.Clusters {
			if c.Paused {
				paused++
			}
			if c.Refusal != "" {
				refusals++
			}
			for _, n := range c.NodeStatus {
				votes += len(n.Votes)
				if n.UpdatedAt != nil {
					facts++
				}
			}
		}
		evs, _, _ := a.ChangesSince(0)
		for _, ev := range evs {
			if ev.Kind == KindChannel && ev.Deleted {
				channelDeletes++
			}
		}
		sa, sb := snapshotBytes(t, a), snapshotBytes(t, b)
		if !bytes.Equal(sa, sb) {
			t.Fatalf("seed %d: snapshots differ after the same log", seed)
		}

		c := New()
		replay(t, c, log[:len(log)/2])
		mid := snapshotBytes(t, c)
		d := New()
		if err := restoreBytes(d, mid); err != nil {
			t.Fatalf("seed %d: restore: %v", seed, err)
		}
		replay(t, d, log[len(log)/2:])
		if !bytes.Equal(sa, snapshotBytes(t, d)) {
			t.Fatalf("seed %d: snapshot after restore+replay differs from a straight replay", seed)
		}
	}
}

// TestSnapshotRoundTripProperty: generated states and logs survive snapshot → restore →
// snapshot byte for byte.
func TestSnapshotRoundTripProperty(t *testing.T) {
	for seed := uint64(1); seed <= 300; seed++ {
		r := rand.New(rand.NewPCG(seed, 7))
		var f *FSM
		if seed%3 == 0 {
			f = New()
			replay(t, f, genLog(r, r.IntN(200)))
		} else {
			f = withState(t, genState(r), r.Uint64N(1<<40))
		}
		first := snapshotBytes(t, f)
		g := New()
		if err := restoreBytes(g, first); err != nil {
			t.Fatalf("seed %d: restore: %v", seed, err)
		}
		if g.AppliedIndex() != f.AppliedIndex() {
			t.Fatalf("seed %d: applied index %d, want %d", seed, g.AppliedIndex(), f.AppliedIndex())
		}
		if second := snapshotBytes(t, g); !bytes.Equal(first, second) {
			t.Fatalf("seed %d: snapshot after restore differs", seed)
		}
		sf, _ := f.State()
		sg, _ := g.State()
		if !proto.Equal(sf, sg) {
			t.Fatalf("seed %d: restored state differs", seed)
		}
	}
}

func TestSnapshotHeader(t *testing.T) {
	f := base(t)
	b := snapshotBytes(t, f)
	if !bytes.HasPrefix(b, []byte("REGENTSNAP")) {
		t.Fatalf("snapshot starts with %q", b[:10])
	}
	if v := binary.BigEndian.Uint32(b[10:]); v != SnapshotVersion {
		t.Fatalf("version = %d", v)
	}
	if idx := binary.BigEndian.Uint64(b[14:]); idx != 3 {
		t.Fatalf("index = %d, want 3", idx)
	}
}

func TestSnapshotDoesNotBlockOnPersist(t *testing.T) {
	f := base(t)
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	// Apply continues while a snapshot waits to be persisted; the snapshot keeps its copy.
	mustApply(t, f, deleteCmd("orders"))
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	snap.Release()
	st, idx, err := ReadSnapshot(bytes.NewReader(sink.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if idx != 3 || len(st.Clusters) != 1 {
		t.Fatalf("snapshot index %d with %d clusters, want the state at index 3", idx, len(st.Clusters))
	}
}

func TestPersistCancelsOnError(t *testing.T) {
	f := base(t)
	snap, _ := f.Snapshot()
	sink := &memSink{failWrite: true}
	err := snap.Persist(sink)
	if err == nil || !strings.Contains(err.Error(), "disk full") || !strings.Contains(err.Error(), "index 3") {
		t.Fatalf("Persist = %v", err)
	}
	if !sink.cancelled || sink.closed {
		t.Fatalf("cancelled=%v closed=%v, want cancelled only", sink.cancelled, sink.closed)
	}
}

// craft builds a snapshot from raw records with a correct checksum, for records that
// WriteSnapshot would never write.
type rawRecord struct {
	kind byte
	msg  proto.Message
	raw  []byte // used when msg is nil
}

func craft(version uint32, index uint64, recs ...rawRecord) []byte {
	var b bytes.Buffer
	b.WriteString(SnapshotMagic)
	_ = binary.Write(&b, binary.BigEndian, version)
	_ = binary.Write(&b, binary.BigEndian, index)
	for _, r := range recs {
		body := r.raw
		if r.msg != nil {
			body, _ = deterministic.Marshal(r.msg)
		}
		b.WriteByte(r.kind)
		b.Write(binary.AppendUvarint(nil, uint64(len(body))))
		b.Write(body)
	}
	b.WriteByte(recEnd)
	_ = binary.Write(&b, binary.BigEndian, crc32.Checksum(b.Bytes(), castagnoli))
	return b.Bytes()
}

func TestRestoreRejectsBadSnapshots(t *testing.T) {
	good := snapshotBytes(t, failedOver(t))
	meta := rawRecord{kind: recMeta, msg: &regentv1.State{NextAuditId: 5, NextChannelId: 3}}
	cl := func(name string) rawRecord { return rawRecord{kind: recCluster, msg: &regentv1.Cluster{Name: name}} }

	flip := func(i int) []byte {
		b := bytes.Clone(good)
		b[i] ^= 0x40
		return b
	}
	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "truncated while reading header"},
		{"wrong magic", append([]byte("NOTREGENT!"), good[10:]...), `not a regent snapshot: starts with "NOTREGENT!"`},
		{"raft-boltdb junk", []byte("{\"json\": true}"), "not a regent snapshot"},
		{"unknown version", craft(2, 9, meta), "snapshot format version 2 is not supported (this regent reads version 1)"},
		{"truncated header", good[:15], "truncated while reading header"},
		{"truncated body", good[:len(good)/2], "truncated"},
		{"no checksum", good[:len(good)-2], "truncated while reading checksum"},
		{"flipped byte in body", flip(len(good) / 2), ""},
		{"flipped checksum", flip(len(good) - 1), "checksum mismatch"},
		{"trailing data", append(bytes.Clone(good), 0), "unexpected data after the end"},
		{"unknown record kind", craft(1, 9, meta, rawRecord{kind: 77, raw: []byte{}}), "record 2 has unknown kind 77"},
		{"no meta", craft(1, 9, cl("a")), "record 1 (cluster) is out of order"},
		{"missing meta entirely", craft(1, 9), "no meta record"},
		{"two metas", craft(1, 9, meta, meta), "record 2 (meta) is out of order"},
		{"kinds out of order", craft(1, 9, meta, rawRecord{kind: recMember, msg: &regentv1.Member{Name: "w"}}, cl("a")),
			"record 3 (cluster) is out of order"},
		{"clusters unsorted", craft(1, 9, meta, cl("b"), cl("a")), `clusters are not sorted by unique key: "b" comes before "a"`},
		{"duplicate cluster", craft(1, 9, meta, cl("a"), cl("a")), `clusters are not sorted by unique key: "a" comes before "a"`},
		{"node status unsorted", craft(1, 9, meta, rawRecord{kind: recCluster, msg: &regentv1.Cluster{Name: "a",
			NodeStatus: []*regentv1.NodeStatus{{Name: "n2"}, {Name: "n1"}}}}), `node status of cluster "a" are not sorted`},
		{"id at counter", craft(1, 9, meta, rawRecord{kind: recAudit, msg: &regentv1.AuditRecord{Id: 5}}),
			"audit records: id 5 is not between 1 and the next id 5"},
		{"channel id zero", craft(1, 9, meta, rawRecord{kind: recChannel, msg: &regentv1.ReplicationChannel{}}), "channels: id 0"},
		{"removed ids unsorted", craft(1, 9, rawRecord{kind: recMeta, msg: &regentv1.State{RemovedMemberIds: []string{"b", "a"}}}),
			"removed member ids are not sorted"},
		{"objects in meta", craft(1, 9, rawRecord{kind: recMeta, msg: &regentv1.State{Clusters: []*regentv1.Cluster{{Name: "a"}}}}),
			"record 1 (meta) holds objects"},
		{"record does not decode", craft(1, 9, meta, rawRecord{kind: recCluster, raw: []byte{0x0a, 0x09}}), "record 2 (cluster) does not decode"},
		{"huge length", func() []byte {
			b := craft(1, 9, meta)
			b = b[:len(b)-5] // drop end + checksum
			b = append(b, recCluster)
			b = binary.AppendUvarint(b, 1<<40)
			return b
		}(), "claims 1099511627776 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := base(t)
			before, idx := stateBytes(t, f), f.AppliedIndex()
			_, _, wait := f.ChangesSince(idx)
			rc := &closeTracker{Reader: bytes.NewReader(tt.data)}
			err := f.Restore(rc)
			if !errors.Is(err, ErrBadSnapshot) {
				t.Fatalf("Restore = %v, want ErrBadSnapshot", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Restore = %q, want it to contain %q", err, tt.want)
			}
			if !rc.closed {
				t.Error("Restore did not close its reader")
			}
			if !bytes.Equal(before, stateBytes(t, f)) || f.AppliedIndex() != idx {
				t.Fatal("a failed Restore changed the state")
			}
			select {
			case <-wait:
				t.Fatal("a failed Restore woke watchers")
			default:
			}
			if evs, complete, _ := f.ChangesSince(idx - 1); !complete || len(evs) == 0 {
				t.Fatal("a failed Restore reset the change history")
			}
		})
	}
}

// TestRestoreEveryPrefixFails: no truncation of a snapshot is accepted.
func TestRestoreEveryPrefixFails(t *testing.T) {
	good := snapshotBytes(t, failedOver(t))
	for n := range len(good) {
		if _, _, err := ReadSnapshot(bytes.NewReader(good[:n])); !errors.Is(err, ErrBadSnapshot) {
			t.Fatalf("prefix of %d/%d bytes: err = %v", n, len(good), err)
		}
	}
	// And no single flipped bit.
	for i := range len(good) {
		b := bytes.Clone(good)
		b[i] ^= 1
		if _, _, err := ReadSnapshot(bytes.NewReader(b)); !errors.Is(err, ErrBadSnapshot) {
			t.Fatalf("bit flipped at byte %d: err = %v", i, err)
		}
	}
}

func TestRestoreReplacesState(t *testing.T) {
	src := failedOver(t)
	dst := base(t)
	snap := snapshotBytes(t, src)
	rc := &closeTracker{Reader: bytes.NewReader(snap)}
	if err := dst.Restore(rc); err != nil {
		t.Fatal(err)
	}
	if !rc.closed {
		t.Error("Restore did not close its reader")
	}
	if !bytes.Equal(stateBytes(t, src), stateBytes(t, dst)) || dst.AppliedIndex() != 50 {
		t.Fatal("restored state differs from the source")
	}
	if _, ok := dst.Member("w1"); ok {
		t.Fatal("Restore kept old state")
	}
	// The log continues after the snapshot.
	res := applyAt(t, dst, 51, applyCmd(testSpec("new", "a", "a")))
	if res.Err != nil || dst.AppliedIndex() != 51 {
		t.Fatalf("apply after restore: %+v", res)
	}
}

func TestRaftLogAfterRestoreIsApplied(t *testing.T) {
	// Apply of a LogCommand with the raft interfaces only (no helpers).
	f := New()
	data, err := Encode(regentv1.CommandType_COMMAND_TYPE_RECORD_AUDIT, &regentv1.RecordAuditCommand{Action: "a"}, t0, "x")
	if err != nil {
		t.Fatal(err)
	}
	var fsm raft.FSM = f
	if res := fsm.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: data}).(*Result); res.Err != nil {
		t.Fatal(res.Err)
	}
}
