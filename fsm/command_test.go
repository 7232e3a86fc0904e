package fsm

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

func sampleEntries() []entry {
	return []entry{
		applyCmd(testSpec("orders", "n1", "n1", "n2")),
		deleteCmd("orders"),
		upsertCmd(testMember("w1", "id-1")),
		removeCmd("w1"),
		auditCmd("pause", "orders"),
		observeCmd(&regentv1.RecordObservationsCommand{
			Votes: []*regentv1.VoteUpdate{{Cluster: "orders", Node: "n1", Vote: &regentv1.Vote{Witness: "w1", Reachable: true}}},
			Nodes: []*regentv1.NodeStatusUpdate{{Cluster: "orders", Status: &regentv1.NodeStatus{Name: "n1", Role: regentv1.NodeRole_NODE_ROLE_PRIMARY}}},
		}),
		channelsCmd(&regentv1.UpdateChannelsCommand{
			Channels: []*regentv1.ReplicationChannel{{Cluster: "orders", PrimaryRegion: "r0", SecondaryRegion: "r1", ApplyLsn: 10, PrimaryLsn: 20, LagBytes: 10}},
			Clusters: []string{"orders"},
		}),
		pauseCmd("orders", true, "maintenance"),
		refusalCmd("orders", "paused: maintenance"),
		startCmd(&regentv1.StartFailoverCommand{Cluster: "orders", FromNode: "n1", ToNode: "n2", TriggerReason: "primary down", Term: 3,
			OldPrimaryLsn: 100, EstimatedLossBytes: 10}),
		advanceCmd(&regentv1.AdvanceFailoverCommand{EventId: 1, Step: regentv1.FailoverStep_FAILOVER_STEP_FENCED, Term: 3, FenceMethod: "sql",
			DataLossBytes: proto.Int64(10), Note: "fenced over sql"}),
		rejoinCmd(&regentv1.RecordRejoinCommand{EventId: 1, Term: 3, Rejoin: &regentv1.Rejoin{Status: regentv1.RejoinStatus_REJOIN_STATUS_REBUILDING,
			Method: "rewind"}, DataLossBytes: proto.Int64(56056), LostTransactions: proto.Int64(25), ForkLsn: 0x402E830, FinalLsn: 0x403C328}),
	}
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	if len(sampleEntries()) != len(handlers) {
		t.Fatalf("sampleEntries covers %d command types, the handler table has %d", len(sampleEntries()), len(handlers))
	}
	at := time.Date(2025, 1, 2, 3, 4, 5, 678, time.UTC)
	for _, e := range sampleEntries() {
		data, err := Encode(e.typ, e.payload, at, e.actor)
		if err != nil {
			t.Fatalf("Encode(%s): %v", e.typ, err)
		}
		cmd, payload, err := Decode(data)
		if err != nil {
			t.Fatalf("Decode(%s): %v", e.typ, err)
		}
		if cmd.GetType() != e.typ || cmd.GetActor() != e.actor || !cmd.GetAt().AsTime().Equal(at) {
			t.Errorf("%s: envelope = %v", e.typ, cmd)
		}
		if !proto.Equal(payload, e.payload) {
			t.Errorf("%s: payload = %v, want %v", e.typ, payload, e.payload)
		}
		// Encoding is deterministic.
		again, _ := Encode(e.typ, e.payload, at, e.actor)
		if string(again) != string(data) {
			t.Errorf("%s: Encode is not deterministic", e.typ)
		}
	}
}

func TestEncodeErrors(t *testing.T) {
	ok := &regentv1.DeleteClusterCommand{Name: "x"}
	tests := []struct {
		name    string
		typ     regentv1.CommandType
		payload proto.Message
		at      time.Time
		want    string
	}{
		{"unspecified type", regentv1.CommandType_COMMAND_TYPE_UNSPECIFIED, ok, t0, "unknown command type COMMAND_TYPE_UNSPECIFIED"},
		{"unknown type", regentv1.CommandType(99), ok, t0, "unknown command type 99"},
		{"nil payload", regentv1.CommandType_COMMAND_TYPE_DELETE_CLUSTER, nil, t0, "needs a regent.v1.DeleteClusterCommand payload, got nil"},
		{"wrong payload", regentv1.CommandType_COMMAND_TYPE_APPLY_CLUSTER, ok, t0,
			"needs a regent.v1.ApplyClusterCommand payload, got regent.v1.DeleteClusterCommand"},
		{"zero time", regentv1.CommandType_COMMAND_TYPE_DELETE_CLUSTER, ok, time.Time{}, "has no time"},
		{"time out of range", regentv1.CommandType_COMMAND_TYPE_DELETE_CLUSTER, ok, time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), "time"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Encode(tt.typ, tt.payload, tt.at, "alice")
			if !errors.Is(err, ErrBadCommand) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Encode = %v, want ErrBadCommand containing %q", err, tt.want)
			}
		})
	}
}

func TestDecodeErrors(t *testing.T) {
	env := func(c *regentv1.Command) []byte {
		b, err := proto.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	valid := timestamppb.New(t0)
	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"garbage", []byte{0xff, 0xff, 0xff}, "not a command envelope"},
		{"empty", nil, "unknown command type 0"},
		{"unknown type", env(&regentv1.Command{Type: 42, At: valid}), "unknown command type 42"},
		{"no time", env(&regentv1.Command{Type: regentv1.CommandType_COMMAND_TYPE_RECORD_AUDIT}), "has no time"},
		{"bad time", env(&regentv1.Command{Type: regentv1.CommandType_COMMAND_TYPE_RECORD_AUDIT, At: &timestamppb.Timestamp{Nanos: -1}}), "bad time"},
		{"bad payload", env(&regentv1.Command{Type: regentv1.CommandType_COMMAND_TYPE_APPLY_CLUSTER, At: valid, Payload: []byte{0x0a, 0x05, 0x01}}),
			"payload is not a regent.v1.ApplyClusterCommand"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd, p, err := Decode(tt.data)
			if !errors.Is(err, ErrBadCommand) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Decode = %v, want ErrBadCommand containing %q", err, tt.want)
			}
			if cmd != nil || p != nil {
				t.Fatalf("Decode returned values with its error")
			}
		})
	}
}

func TestApplyPanicsOnUndecodableEntry(t *testing.T) {
	f := New()
	defer func() {
		r := recover()
		if r == nil || !strings.Contains(r.(string), "raft log entry 7") {
			t.Fatalf("recover() = %v, want a panic naming the entry", r)
		}
	}()
	f.Apply(&raft.Log{Index: 7, Type: raft.LogCommand, Data: []byte("garbage")})
}

func FuzzDecode(f *testing.F) {
	for _, e := range sampleEntries() {
		f.Add(mustEncode(f, e))
	}
	f.Add(mustEncode(f, applyCmd(&regentv1.ClusterSpec{})))
	f.Add(mustEncode(f, upsertCmd(&regentv1.Member{})))
	f.Add(mustEncode(f, startCmd(&regentv1.StartFailoverCommand{})))
	f.Add(mustEncode(f, advanceCmd(&regentv1.AdvanceFailoverCommand{EventId: 1, Step: 99})))
	f.Add([]byte{})
	f.Add([]byte{0x08, 0x01, 0x12, 0x00})
	f.Fuzz(func(t *testing.T, data []byte) {
		cmd, payload, err := Decode(data)
		if err != nil {
			if !errors.Is(err, ErrBadCommand) {
				t.Fatalf("Decode error does not wrap ErrBadCommand: %v", err)
			}
			return
		}
		// Whatever decodes must apply without panicking, and be encodable again.
		fsm := New()
		res := fsm.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: data}).(*Result)
		if res.Err != nil && fsm.AppliedIndex() != 1 {
			t.Fatalf("applied index not advanced after a rejected command")
		}
		if _, err := Encode(cmd.GetType(), payload, cmd.GetAt().AsTime(), cmd.GetActor()); err != nil {
			t.Fatalf("re-encoding a decoded command: %v", err)
		}
	})
}
