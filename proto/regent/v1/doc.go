// Package regentv1 is the generated Go code for regent's protobuf schema: replicated state
// (state.proto), Raft commands (command.proto) and the gRPC API (api.proto). Run `make proto`
// after editing a .proto file.
package regentv1
