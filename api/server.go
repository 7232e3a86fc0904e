// Package api implements the regent.v1 gRPC service on a witness: reads are answered from the
// local FSM (or linearizably by the leader), writes are proposed to Raft on the leader and
// forwarded to it from followers.
package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/regentdb/regent/fsm"
	"github.com/regentdb/regent/gossip"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
	"github.com/regentdb/regent/spec"
	"github.com/regentdb/regent/store"
)

// forwardedKey marks a request a follower forwarded, so it is never forwarded twice.
const forwardedKey = "regent-forwarded-by"

// Server implements regentv1.RegentServer.
type Server struct {
	regentv1.UnimplementedRegentServer

	name   string
	store  *store.Store
	fsm    *fsm.FSM
	gossip *gossip.Gossip
	logger *slog.Logger

	mu         sync.Mutex
	conns      map[string]*grpc.ClientConn // leader gRPC address → connection
	onReport   func(witness string, obs []*regentv1.Observation) error
	onFailover func(ctx context.Context, req *regentv1.FailoverRequest, actor string) (*regentv1.FailoverEvent, error)
	onSwitch   func(ctx context.Context, req *regentv1.SwitchoverRequest, actor string) (*regentv1.FailoverEvent, error)
	onRenew    func(*regentv1.RenewLeaseRequest) *regentv1.RenewLeaseResponse
	onRevoke   func(*regentv1.RevokeLeaseRequest) (*regentv1.RevokeLeaseResponse, error)
}

// SetLeaseHandlers sets how this witness answers lease renewals and revocations.
func (s *Server) SetLeaseHandlers(renew func(*regentv1.RenewLeaseRequest) *regentv1.RenewLeaseResponse, revoke func(*regentv1.RevokeLeaseRequest) (*regentv1.RevokeLeaseResponse, error)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.onRenew, s.onRevoke = renew, revoke
}

// RenewLease answers a primary keeper's renewal from this witness alone (never forwarded: the
// lease must hold while the witnesses elect a leader).
func (s *Server) RenewLease(ctx context.Context, req *regentv1.RenewLeaseRequest) (*regentv1.RenewLeaseResponse, error) {
	if req.GetCluster() == "" || req.GetNode() == "" || req.GetEpoch() == 0 {
		return nil, invalid("cluster, node, epoch", "are required")
	}
	s.mu.Lock()
	h := s.onRenew
	s.mu.Unlock()
	if h == nil {
		return nil, status.Error(codes.Unavailable, "this witness is starting; retry")
	}
	return h(req), nil
}

// RevokeLease records, durably, that this witness grants no more renewals of the epoch, and
// answers how long before that it last granted one (0: unknown).
func (s *Server) RevokeLease(ctx context.Context, req *regentv1.RevokeLeaseRequest) (*regentv1.RevokeLeaseResponse, error) {
	if req.GetCluster() == "" || req.GetEpoch() == 0 {
		return nil, invalid("cluster, epoch", "are required")
	}
	s.mu.Lock()
	h := s.onRevoke
	s.mu.Unlock()
	if h == nil {
		return nil, status.Error(codes.Unavailable, "this witness is starting; retry")
	}
	resp, err := h(req)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "revoke: %v", err)
	}
	return resp, nil
}

// SetFailoverHandler sets how the leader starts a manual failover (see Failover).
func (s *Server) SetFailoverHandler(h func(ctx context.Context, req *regentv1.FailoverRequest, actor string) (*regentv1.FailoverEvent, error)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.onFailover = h
}

// Failover starts a manual failover on the leader; a follower forwards the request.
func (s *Server) Failover(ctx context.Context, req *regentv1.FailoverRequest) (*regentv1.FailoverResponse, error) {
	if req.GetCluster() == "" {
		return nil, invalid("cluster", "is required")
	}
	if resp, fwd, err := toLeader(s, ctx, req, regentv1.RegentClient.Failover); fwd {
		return resp, err
	}
	s.mu.Lock()
	h := s.onFailover
	s.mu.Unlock()
	if h == nil {
		return nil, retryable(codes.Unavailable, "this leader does not take failover requests yet; retry")
	}
	ev, err := h(ctx, req, actor(ctx))
	if err != nil {
		return nil, toStatus(err)
	}
	return &regentv1.FailoverResponse{Event: ev}, nil
}

// SetSwitchoverHandler sets how the leader starts a switchover (see Switchover).
func (s *Server) SetSwitchoverHandler(h func(ctx context.Context, req *regentv1.SwitchoverRequest, actor string) (*regentv1.FailoverEvent, error)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.onSwitch = h
}

// Switchover starts a planned, zero-loss change of primary on the leader (audited under the
// caller's name); a follower forwards the request.
func (s *Server) Switchover(ctx context.Context, req *regentv1.SwitchoverRequest) (*regentv1.SwitchoverResponse, error) {
	if req.GetCluster() == "" {
		return nil, invalid("cluster", "is required")
	}
	if req.GetTo() == "" {
		return nil, invalid("to", "is required: name the standby to promote")
	}
	if resp, fwd, err := toLeader(s, ctx, req, regentv1.RegentClient.Switchover); fwd {
		return resp, err
	}
	s.mu.Lock()
	h := s.onSwitch
	s.mu.Unlock()
	if h == nil {
		return nil, retryable(codes.Unavailable, "this leader does not take switchover requests yet; retry")
	}
	ev, err := h(ctx, req, actor(ctx))
	if err != nil {
		return nil, toStatus(err)
	}
	return &regentv1.SwitchoverResponse{Event: ev}, nil
}

// Pause stops automatic failover of a cluster.
func (s *Server) Pause(ctx context.Context, req *regentv1.PauseRequest) (*regentv1.PauseResponse, error) {
	c, err := s.setPaused(ctx, req.GetCluster(), true, req.GetReason())
	if err != nil {
		return nil, err
	}
	return &regentv1.PauseResponse{Cluster: c}, nil
}

// Resume re-enables automatic failover of a cluster.
func (s *Server) Resume(ctx context.Context, req *regentv1.ResumeRequest) (*regentv1.ResumeResponse, error) {
	c, err := s.setPaused(ctx, req.GetCluster(), false, "")
	if err != nil {
		return nil, err
	}
	return &regentv1.ResumeResponse{Cluster: c}, nil
}

func (s *Server) setPaused(ctx context.Context, cluster string, paused bool, reason string) (*regentv1.Cluster, error) {
	if cluster == "" {
		return nil, invalid("cluster", "is required")
	}
	if !s.store.IsLeader() {
		c, fctx, err := s.leaderClient(ctx)
		if err != nil {
			return nil, err
		}
		if paused {
			resp, err := c.Pause(fctx, &regentv1.PauseRequest{Cluster: cluster, Reason: reason})
			return resp.GetCluster(), err
		}
		resp, err := c.Resume(fctx, &regentv1.ResumeRequest{Cluster: cluster})
		return resp.GetCluster(), err
	}
	if _, err := s.propose(ctx, regentv1.CommandType_COMMAND_TYPE_SET_PAUSED, &regentv1.SetPausedCommand{Cluster: cluster, Paused: paused, Reason: reason}); err != nil {
		return nil, err
	}
	c, _ := s.fsm.Cluster(cluster)
	return c, nil
}

// SetReportHandler sets what the leader does with a witness's observations (see Report).
func (s *Server) SetReportHandler(h func(witness string, obs []*regentv1.Observation) error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.onReport = h
}

// Report hands a witness's observations to the leader's handler; a follower forwards them.
func (s *Server) Report(ctx context.Context, req *regentv1.ReportRequest) (*regentv1.ReportResponse, error) {
	if req.GetWitness() == "" {
		return nil, invalid("witness", "is required")
	}
	for i, o := range req.GetObservations() {
		if o.GetCluster() == "" || o.GetNode() == "" || o.GetAt() == nil {
			return nil, invalid(fmt.Sprintf("observations[%d]", i), "needs cluster, node and at")
		}
	}
	if resp, fwd, err := toLeader(s, ctx, req, regentv1.RegentClient.Report); fwd {
		return resp, err
	}
	s.mu.Lock()
	h := s.onReport
	s.mu.Unlock()
	if h == nil {
		return nil, retryable(codes.Unavailable, "this leader does not take reports yet; retry")
	}
	if err := h(req.GetWitness(), req.GetObservations()); err != nil {
		return nil, retryable(codes.Unavailable, err.Error())
	}
	return &regentv1.ReportResponse{}, nil
}

// New returns the service for one witness named name.
func New(name string, st *store.Store, g *gossip.Gossip, logger *slog.Logger) *Server {
	return &Server{name: name, store: st, fsm: st.FSM(), gossip: g, logger: logger, conns: map[string]*grpc.ClientConn{}}
}

// Close drops the connections kept for forwarding.
func (s *Server) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for addr, c := range s.conns {
		c.Close()
		delete(s.conns, addr)
	}
}

// actor names who asked, for audit records: the peer's address until authentication lands.
func actor(ctx context.Context) string {
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get("regent-actor"); len(v) > 0 && v[0] != "" {
			return v[0]
		}
	}
	return "operator"
}

// leaderClient returns a client for the leader's API, or an error saying why there is none.
func (s *Server) leaderClient(ctx context.Context) (regentv1.RegentClient, context.Context, error) {
	if md, ok := metadata.FromIncomingContext(ctx); ok && len(md.Get(forwardedKey)) > 0 {
		return nil, nil, retryable(codes.Unavailable, "leadership moved while the request was forwarded; retry")
	}
	id, _ := s.store.Leader()
	if id == "" {
		return nil, nil, retryable(codes.Unavailable, "no Raft leader is known (election in progress); retry in a second")
	}
	addr := ""
	for _, p := range s.gossip.Peers() {
		if p.Meta.ID == id {
			addr = p.Meta.GRPCAddr
		}
	}
	if addr == "" {
		if m, ok := s.fsm.MemberByID(id); ok {
			addr = m.GetGrpcAddr()
		}
	}
	if addr == "" {
		return nil, nil, retryable(codes.Unavailable, fmt.Sprintf("the leader %s has not advertised its API address yet; retry", id))
	}
	s.mu.Lock()
	conn, ok := s.conns[addr]
	if !ok {
		var err error
		conn, err = grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			s.mu.Unlock()
			return nil, nil, status.Errorf(codes.Internal, "dial leader at %s: %v", addr, err)
		}
		s.conns[addr] = conn
	}
	s.mu.Unlock()
	out := metadata.AppendToOutgoingContext(ctx, forwardedKey, s.name, "regent-actor", actor(ctx))
	return regentv1.NewRegentClient(conn), out, nil
}

// retryable builds a status carrying a RetryInfo detail.
func retryable(code codes.Code, msg string) error {
	st := status.New(code, msg)
	if d, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(time.Second)}); err == nil {
		return d.Err()
	}
	return st.Err()
}

// toStatus maps package errors to gRPC codes.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, spec.ErrInvalid):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, fsm.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, fsm.ErrRemoved), errors.Is(err, fsm.ErrConflict):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, store.ErrNoLeader), errors.Is(err, store.ErrNotLeader):
		return retryable(codes.Unavailable, err.Error())
	case errors.Is(err, store.ErrClosed):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}

// propose commits a command on the leader and returns the FSM result or a gRPC error.
func (s *Server) propose(ctx context.Context, t regentv1.CommandType, payload proto.Message) (*fsm.Result, error) {
	res, err := s.store.Propose(ctx, t, payload, actor(ctx))
	if err != nil {
		return nil, toStatus(err)
	}
	if res.Err != nil {
		return nil, toStatus(res.Err)
	}
	return res, nil
}

// toLeader forwards a write to the leader's API when this witness does not lead; forwarded is
// false when the caller (the leader) must handle the request itself.
func toLeader[Req, Resp any](s *Server, ctx context.Context, req Req,
	call func(regentv1.RegentClient, context.Context, Req, ...grpc.CallOption) (Resp, error)) (resp Resp, forwarded bool, err error) {
	if s.store.IsLeader() {
		return resp, false, nil
	}
	c, fctx, err := s.leaderClient(ctx)
	if err != nil {
		return resp, true, err
	}
	resp, err = call(c, fctx, req)
	return resp, true, err
}

// readVia answers a read through the leader when it must be linearizable and this witness does
// not lead (or fails it when leadership cannot be confirmed); handled is false when the caller
// answers from its own state.
func readVia[Req, Resp any](s *Server, ctx context.Context, opts *regentv1.ReadOptions, req Req,
	call func(regentv1.RegentClient, context.Context, Req, ...grpc.CallOption) (Resp, error)) (resp Resp, handled bool, err error) {
	c, fctx, err := s.read(ctx, opts)
	if err != nil {
		return resp, true, err
	}
	if c == nil {
		return resp, false, nil
	}
	resp, err = call(c, fctx, req)
	return resp, true, err
}

// read prepares a read: linearizable reads go to the leader, which confirms it still leads.
// It returns a non-nil client when the read must be forwarded.
func (s *Server) read(ctx context.Context, opts *regentv1.ReadOptions) (regentv1.RegentClient, context.Context, error) {
	if !opts.GetConsistent() {
		return nil, nil, nil
	}
	if s.store.IsLeader() {
		return nil, nil, toStatus(s.store.VerifyRead(ctx))
	}
	return s.leaderClient(ctx)
}

func invalid(field, msg string) error {
	return status.Errorf(codes.InvalidArgument, "%s: %s", field, msg)
}

// GetState answers the whole picture.
func (s *Server) GetState(ctx context.Context, req *regentv1.GetStateRequest) (*regentv1.GetStateResponse, error) {
	if resp, fwd, err := readVia(s, ctx, req.GetRead(), req, regentv1.RegentClient.GetState); fwd {
		return resp, err
	}
	st, idx := s.fsm.State()
	leader, members := s.memberStatus()
	return &regentv1.GetStateResponse{
		Leader:         leader,
		Members:        members,
		Clusters:       st.GetClusters(),
		Channels:       st.GetChannels(),
		FailoverEvents: st.GetFailoverEvents(),
		Index:          idx,
		ServedBy:       s.name,
		Keepers:        s.keeperStatus(),
	}, nil
}

// ApplyCluster validates a spec and commits it.
func (s *Server) ApplyCluster(ctx context.Context, req *regentv1.ApplyClusterRequest) (*regentv1.ApplyClusterResponse, error) {
	if req.GetSpec() == nil {
		return nil, invalid("spec", "is required")
	}
	if err := spec.Validate(req.GetSpec()); err != nil {
		return nil, toStatus(err)
	}
	if resp, fwd, err := toLeader(s, ctx, req, regentv1.RegentClient.ApplyCluster); fwd {
		return resp, err
	}
	sp := proto.Clone(req.GetSpec()).(*regentv1.ClusterSpec)
	sp.Policy = spec.WithDefaults(sp.GetPolicy())
	res, err := s.propose(ctx, regentv1.CommandType_COMMAND_TYPE_APPLY_CLUSTER, &regentv1.ApplyClusterCommand{Spec: sp})
	if err != nil {
		return nil, err
	}
	return &regentv1.ApplyClusterResponse{Cluster: res.Cluster, Created: res.Created, Warnings: res.Warnings, Index: res.Index}, nil
}

// DeleteCluster removes a cluster.
func (s *Server) DeleteCluster(ctx context.Context, req *regentv1.DeleteClusterRequest) (*regentv1.DeleteClusterResponse, error) {
	if req.GetName() == "" {
		return nil, invalid("name", "is required")
	}
	if resp, fwd, err := toLeader(s, ctx, req, regentv1.RegentClient.DeleteCluster); fwd {
		return resp, err
	}
	res, err := s.propose(ctx, regentv1.CommandType_COMMAND_TYPE_DELETE_CLUSTER, &regentv1.DeleteClusterCommand{Name: req.GetName()})
	if err != nil {
		return nil, err
	}
	return &regentv1.DeleteClusterResponse{Index: res.Index}, nil
}

// ListClusters returns every cluster.
func (s *Server) ListClusters(ctx context.Context, req *regentv1.ListClustersRequest) (*regentv1.ListClustersResponse, error) {
	if resp, fwd, err := readVia(s, ctx, req.GetRead(), req, regentv1.RegentClient.ListClusters); fwd {
		return resp, err
	}
	st, idx := s.fsm.State()
	return &regentv1.ListClustersResponse{Clusters: st.GetClusters(), Index: idx}, nil
}

// ListChannels returns replication channels, optionally of one cluster.
func (s *Server) ListChannels(ctx context.Context, req *regentv1.ListChannelsRequest) (*regentv1.ListChannelsResponse, error) {
	if resp, fwd, err := readVia(s, ctx, req.GetRead(), req, regentv1.RegentClient.ListChannels); fwd {
		return resp, err
	}
	st, idx := s.fsm.State()
	if err := s.checkCluster(st, req.GetCluster()); err != nil {
		return nil, err
	}
	var out []*regentv1.ReplicationChannel
	for _, ch := range st.GetChannels() {
		if req.GetCluster() == "" || ch.GetCluster() == req.GetCluster() {
			out = append(out, ch)
		}
	}
	return &regentv1.ListChannelsResponse{Channels: out, Index: idx}, nil
}

// ListFailoverEvents returns failover events, optionally of one cluster.
func (s *Server) ListFailoverEvents(ctx context.Context, req *regentv1.ListFailoverEventsRequest) (*regentv1.ListFailoverEventsResponse, error) {
	if resp, fwd, err := readVia(s, ctx, req.GetRead(), req, regentv1.RegentClient.ListFailoverEvents); fwd {
		return resp, err
	}
	st, idx := s.fsm.State()
	var out []*regentv1.FailoverEvent
	for _, ev := range st.GetFailoverEvents() {
		if req.GetCluster() == "" || ev.GetCluster() == req.GetCluster() {
			out = append(out, ev)
		}
	}
	return &regentv1.ListFailoverEventsResponse{FailoverEvents: out, Index: idx}, nil
}

// checkCluster rejects a filter naming a cluster that does not exist.
func (s *Server) checkCluster(st *regentv1.State, name string) error {
	if name == "" {
		return nil
	}
	for _, c := range st.GetClusters() {
		if c.GetName() == name {
			return nil
		}
	}
	return status.Errorf(codes.NotFound, "cluster %q does not exist (see regent cluster list)", name)
}

// Members returns the witnesses with their Raft roles, and the keepers in this witness's gossip.
func (s *Server) Members(ctx context.Context, req *regentv1.MembersRequest) (*regentv1.MembersResponse, error) {
	if resp, fwd, err := readVia(s, ctx, req.GetRead(), req, regentv1.RegentClient.Members); fwd {
		return resp, err
	}
	leader, members := s.memberStatus()
	return &regentv1.MembersResponse{Leader: leader, Members: members, Keepers: s.keeperStatus()}, nil
}

// keeperStatus is this witness's gossip view of the keepers, sorted by cluster and node.
func (s *Server) keeperStatus() []*regentv1.KeeperMember {
	peers := s.gossip.Keepers()
	out := make([]*regentv1.KeeperMember, 0, len(peers))
	for _, p := range peers {
		out = append(out, &regentv1.KeeperMember{
			Cluster: p.Meta.Cluster, Node: p.Meta.Node, KeeperAddr: p.Meta.GRPCAddr, HttpAddr: p.Meta.HTTPAddr,
			GossipAddr: p.Addr, Gossip: p.State, Since: timestamppb.New(p.Since),
		})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].GetCluster() != out[j].GetCluster() {
			return out[i].GetCluster() < out[j].GetCluster()
		}
		return out[i].GetNode() < out[j].GetNode()
	})
	return out
}

// memberStatus merges the Raft configuration, gossip and the member table.
func (s *Server) memberStatus() (string, []*regentv1.MemberStatus) {
	leaderID, _ := s.store.Leader()
	byID := map[string]*regentv1.MemberStatus{}
	get := func(id string) *regentv1.MemberStatus {
		m, ok := byID[id]
		if !ok {
			m = &regentv1.MemberStatus{Id: id, RaftRole: "none", Gossip: "unknown"}
			byID[id] = m
		}
		return m
	}
	st, _ := s.fsm.State()
	for _, m := range st.GetMembers() {
		ms := get(m.GetId())
		ms.Name, ms.Region, ms.RaftAddr, ms.GrpcAddr, ms.HttpAddr = m.GetName(), m.GetRegion(), m.GetRaftAddr(), m.GetGrpcAddr(), m.GetHttpAddr()
	}
	for _, p := range s.gossip.Peers() {
		if p.Meta.ID == "" {
			continue
		}
		ms := get(p.Meta.ID)
		ms.Gossip = p.State
		if ms.Name == "" {
			ms.Name, ms.Region, ms.RaftAddr, ms.GrpcAddr, ms.HttpAddr = p.Name, p.Meta.Region, p.Meta.RaftAddr, p.Meta.GRPCAddr, p.Meta.HTTPAddr
		}
	}
	servers, _ := s.store.Servers()
	for _, sv := range servers {
		ms := get(sv.ID)
		ms.Voter = sv.Voter
		switch {
		case sv.ID == leaderID:
			ms.RaftRole = "leader"
		case !sv.Voter:
			ms.RaftRole = "nonvoter"
		case sv.ID == s.store.ID() && s.store.Raft().State().String() == "Candidate":
			ms.RaftRole = "candidate"
		default:
			ms.RaftRole = "follower"
		}
		if ms.RaftAddr == "" {
			ms.RaftAddr = sv.Address
		}
	}
	leader := ""
	out := make([]*regentv1.MemberStatus, 0, len(byID))
	for _, m := range byID {
		if m.Id == leaderID {
			leader = m.Name
		}
		if s.fsm.IsRemoved(m.Id) && m.RaftRole == "none" {
			continue // removed by an operator and gone from Raft: history, not a member
		}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].Name < out[j].Name || (out[i].Name == out[j].Name && out[i].Id < out[j].Id)
	})
	return leader, out
}

// RemoveMember removes a witness: it is tombstoned in the log first (so it is not re-added from
// gossip), then dropped from the Raft configuration.
func (s *Server) RemoveMember(ctx context.Context, req *regentv1.RemoveMemberRequest) (*regentv1.RemoveMemberResponse, error) {
	if req.GetName() == "" {
		return nil, invalid("name", "is required")
	}
	if resp, fwd, err := toLeader(s, ctx, req, regentv1.RegentClient.RemoveMember); fwd {
		return resp, err
	}
	m, ok := s.fsm.Member(req.GetName())
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no witness named %q (see regent members)", req.GetName())
	}
	servers, err := s.store.Servers()
	if err != nil {
		return nil, toStatus(err)
	}
	voters, isVoter := 0, false
	for _, sv := range servers {
		if sv.Voter {
			voters++
			if sv.ID == m.GetId() {
				isVoter = true
			}
		}
	}
	if isVoter && voters <= 1 {
		return nil, status.Errorf(codes.FailedPrecondition, "%s is the last voter; removing it would leave no cluster", req.GetName())
	}
	res, err := s.propose(ctx, regentv1.CommandType_COMMAND_TYPE_REMOVE_MEMBER, &regentv1.RemoveMemberCommand{Name: req.GetName()})
	if err != nil {
		return nil, err
	}
	for _, sv := range servers {
		if sv.ID == m.GetId() {
			if err := s.store.RemoveServer(sv.ID); err != nil {
				return nil, toStatus(err)
			}
		}
	}
	s.logger.Info("witness removed", "name", req.GetName(), "id", m.GetId(), "by", actor(ctx))
	return &regentv1.RemoveMemberResponse{Index: res.Index}, nil
}

// Watch streams changes after from_index; a full snapshot comes first when the node no longer
// remembers that far back (or from_index is 0).
func (s *Server) Watch(req *regentv1.WatchRequest, stream grpc.ServerStreamingServer[regentv1.WatchEvent]) error {
	ctx := stream.Context()
	idx := req.GetFromIndex()
	snapshot := idx == 0 // a watcher starting from nothing gets the whole state first
	for {
		events, complete, wait := s.fsm.ChangesSince(idx)
		if snapshot || !complete {
			st, at := s.fsm.State()
			if err := stream.Send(&regentv1.WatchEvent{Index: at, Kind: fsm.KindSnapshot, State: st}); err != nil {
				return err
			}
			idx, snapshot = at, false
			continue
		}
		for _, ev := range events {
			if err := stream.Send(ev); err != nil {
				return err
			}
			idx = ev.GetIndex()
		}
		if len(events) > 0 {
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-wait:
		}
	}
}

// MethodName returns the short name of a full gRPC method ("/regent.v1.Regent/GetState" →
// "GetState"), for metrics labels.
func MethodName(full string) string {
	if i := strings.LastIndexByte(full, '/'); i >= 0 {
		return full[i+1:]
	}
	return full
}
