package fsm

import (
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// ErrBadCommand is wrapped by the errors of Encode and Decode: the bytes are not a command
// envelope, the command type is unknown, or the payload does not match the type.
var ErrBadCommand = errors.New("bad command")

// handler is one row of the dispatch table: how to allocate a command's payload, and how to
// apply it to the state inside a transaction.
type handler struct {
	newPayload func() proto.Message
	apply      func(tx *txn, payload proto.Message) error
}

// handlers is the dispatch table: one row per command type. Adding a command means adding a
// message to command.proto, a CommandType, and a row here.
var handlers = map[regentv1.CommandType]handler{
	regentv1.CommandType_COMMAND_TYPE_APPLY_CLUSTER: {
		newPayload: func() proto.Message { return &regentv1.ApplyClusterCommand{} },
		apply:      func(tx *txn, p proto.Message) error { return applyCluster(tx, p.(*regentv1.ApplyClusterCommand)) },
	},
	regentv1.CommandType_COMMAND_TYPE_DELETE_CLUSTER: {
		newPayload: func() proto.Message { return &regentv1.DeleteClusterCommand{} },
		apply:      func(tx *txn, p proto.Message) error { return deleteCluster(tx, p.(*regentv1.DeleteClusterCommand)) },
	},
	regentv1.CommandType_COMMAND_TYPE_UPSERT_MEMBER: {
		newPayload: func() proto.Message { return &regentv1.UpsertMemberCommand{} },
		apply:      func(tx *txn, p proto.Message) error { return upsertMember(tx, p.(*regentv1.UpsertMemberCommand)) },
	},
	regentv1.CommandType_COMMAND_TYPE_REMOVE_MEMBER: {
		newPayload: func() proto.Message { return &regentv1.RemoveMemberCommand{} },
		apply:      func(tx *txn, p proto.Message) error { return removeMember(tx, p.(*regentv1.RemoveMemberCommand)) },
	},
	regentv1.CommandType_COMMAND_TYPE_RECORD_AUDIT: {
		newPayload: func() proto.Message { return &regentv1.RecordAuditCommand{} },
		apply:      func(tx *txn, p proto.Message) error { return recordAudit(tx, p.(*regentv1.RecordAuditCommand)) },
	},
	regentv1.CommandType_COMMAND_TYPE_RECORD_OBSERVATIONS: {
		newPayload: func() proto.Message { return &regentv1.RecordObservationsCommand{} },
		apply: func(tx *txn, p proto.Message) error {
			return recordObservations(tx, p.(*regentv1.RecordObservationsCommand))
		},
	},
	regentv1.CommandType_COMMAND_TYPE_UPDATE_CHANNELS: {
		newPayload: func() proto.Message { return &regentv1.UpdateChannelsCommand{} },
		apply:      func(tx *txn, p proto.Message) error { return updateChannels(tx, p.(*regentv1.UpdateChannelsCommand)) },
	},
	regentv1.CommandType_COMMAND_TYPE_SET_PAUSED: {
		newPayload: func() proto.Message { return &regentv1.SetPausedCommand{} },
		apply:      func(tx *txn, p proto.Message) error { return setPaused(tx, p.(*regentv1.SetPausedCommand)) },
	},
	regentv1.CommandType_COMMAND_TYPE_RECORD_REFUSAL: {
		newPayload: func() proto.Message { return &regentv1.RecordRefusalCommand{} },
		apply:      func(tx *txn, p proto.Message) error { return recordRefusal(tx, p.(*regentv1.RecordRefusalCommand)) },
	},
	regentv1.CommandType_COMMAND_TYPE_START_FAILOVER: {
		newPayload: func() proto.Message { return &regentv1.StartFailoverCommand{} },
		apply:      func(tx *txn, p proto.Message) error { return startFailover(tx, p.(*regentv1.StartFailoverCommand)) },
	},
	regentv1.CommandType_COMMAND_TYPE_ADVANCE_FAILOVER: {
		newPayload: func() proto.Message { return &regentv1.AdvanceFailoverCommand{} },
		apply:      func(tx *txn, p proto.Message) error { return advanceFailover(tx, p.(*regentv1.AdvanceFailoverCommand)) },
	},
	regentv1.CommandType_COMMAND_TYPE_RECORD_REJOIN: {
		newPayload: func() proto.Message { return &regentv1.RecordRejoinCommand{} },
		apply:      func(tx *txn, p proto.Message) error { return recordRejoin(tx, p.(*regentv1.RecordRejoinCommand)) },
	},
}

var deterministic = proto.MarshalOptions{Deterministic: true}

// Encode builds the bytes of a Raft log entry: a regentv1.Command envelope holding the
// command type t, payload (which must be the message type that t expects, e.g.
// *regentv1.ApplyClusterCommand for COMMAND_TYPE_APPLY_CLUSTER), the proposer's time at and
// the actor (operator identity, or "regent/<witness>"). Apply takes every time it stores
// from at, so at must be a valid, non-zero time. Errors wrap ErrBadCommand.
func Encode(t regentv1.CommandType, payload proto.Message, at time.Time, actor string) ([]byte, error) {
	h, ok := handlers[t]
	if !ok {
		return nil, fmt.Errorf("%w: unknown command type %s", ErrBadCommand, t)
	}
	if payload == nil {
		return nil, fmt.Errorf("%w: %s needs a %s payload, got nil", ErrBadCommand, t, proto.MessageName(h.newPayload()))
	}
	if want, got := proto.MessageName(h.newPayload()), proto.MessageName(payload); want != got {
		return nil, fmt.Errorf("%w: %s needs a %s payload, got %s", ErrBadCommand, t, want, got)
	}
	if at.IsZero() {
		return nil, fmt.Errorf("%w: %s has no time; the proposer must stamp the command", ErrBadCommand, t)
	}
	ts := timestamppb.New(at)
	if err := ts.CheckValid(); err != nil {
		return nil, fmt.Errorf("%w: %s: time %v: %v", ErrBadCommand, t, at, err)
	}
	body, err := deterministic.Marshal(payload)
	if err != nil {
		return nil, fmt.Errorf("%w: encoding %s payload: %v", ErrBadCommand, t, err)
	}
	data, err := deterministic.Marshal(&regentv1.Command{Type: t, Payload: body, At: ts, Actor: actor})
	if err != nil {
		return nil, fmt.Errorf("%w: encoding %s envelope: %v", ErrBadCommand, t, err)
	}
	return data, nil
}

// Decode parses the bytes of a Raft log entry into its envelope and its typed payload. It
// returns an error wrapping ErrBadCommand, and never panics, for bytes that are not an
// envelope, an unknown command type (a newer regent wrote it), a missing or invalid time, or
// a payload that does not decode as the type's message.
func Decode(data []byte) (*regentv1.Command, proto.Message, error) {
	cmd := &regentv1.Command{}
	if err := proto.Unmarshal(data, cmd); err != nil {
		return nil, nil, fmt.Errorf("%w: not a command envelope: %v", ErrBadCommand, err)
	}
	h, ok := handlers[cmd.GetType()]
	if !ok {
		return nil, nil, fmt.Errorf("%w: unknown command type %d (%s); was it written by a newer regent?",
			ErrBadCommand, int32(cmd.GetType()), cmd.GetType())
	}
	if cmd.GetAt() == nil {
		return nil, nil, fmt.Errorf("%w: %s has no time", ErrBadCommand, cmd.GetType())
	}
	if err := cmd.GetAt().CheckValid(); err != nil {
		return nil, nil, fmt.Errorf("%w: %s: bad time: %v", ErrBadCommand, cmd.GetType(), err)
	}
	if cmd.GetAt().AsTime().IsZero() {
		return nil, nil, fmt.Errorf("%w: %s has no time (zero time)", ErrBadCommand, cmd.GetType())
	}
	payload := h.newPayload()
	if err := proto.Unmarshal(cmd.GetPayload(), payload); err != nil {
		return nil, nil, fmt.Errorf("%w: %s payload is not a %s: %v", ErrBadCommand, cmd.GetType(),
			proto.MessageName(payload), err)
	}
	return cmd, payload, nil
}
