package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// testNow is the clock of every rendering test, so ages in golden files are stable.
var testNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func ago(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(testNow.Add(-d)) }

// fakeServer answers every RPC with canned responses and records the calls it got.
type fakeServer struct {
	regentv1.UnimplementedRegentServer

	state    *regentv1.GetStateResponse
	apply    *regentv1.ApplyClusterResponse
	failover *regentv1.FailoverResponse
	paused   string                   // pause reason Pause answers with; the request's reason when empty
	keepers  []*regentv1.KeeperMember // Members answers them
	watch    []*regentv1.WatchEvent
	watchEOF bool  // end the stream after sending watch, instead of waiting for the client
	err      error // when set, every call fails with it

	mu    sync.Mutex
	calls []call
}

type call struct {
	method string
	req    proto.Message
}

func (f *fakeServer) record(method string, req proto.Message) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call{method, proto.Clone(req)})
	return f.err
}

func (f *fakeServer) got() []call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]call(nil), f.calls...)
}

func (f *fakeServer) GetState(_ context.Context, req *regentv1.GetStateRequest) (*regentv1.GetStateResponse, error) {
	if err := f.record("GetState", req); err != nil {
		return nil, err
	}
	return f.state, nil
}

func (f *fakeServer) ApplyCluster(_ context.Context, req *regentv1.ApplyClusterRequest) (*regentv1.ApplyClusterResponse, error) {
	if err := f.record("ApplyCluster", req); err != nil {
		return nil, err
	}
	return f.apply, nil
}

func (f *fakeServer) DeleteCluster(_ context.Context, req *regentv1.DeleteClusterRequest) (*regentv1.DeleteClusterResponse, error) {
	if err := f.record("DeleteCluster", req); err != nil {
		return nil, err
	}
	return &regentv1.DeleteClusterResponse{Index: f.state.GetIndex() + 1}, nil
}

func (f *fakeServer) ListClusters(_ context.Context, req *regentv1.ListClustersRequest) (*regentv1.ListClustersResponse, error) {
	if err := f.record("ListClusters", req); err != nil {
		return nil, err
	}
	return &regentv1.ListClustersResponse{Clusters: f.state.GetClusters(), Index: f.state.GetIndex()}, nil
}

func (f *fakeServer) ListChannels(_ context.Context, req *regentv1.ListChannelsRequest) (*regentv1.ListChannelsResponse, error) {
	if err := f.record("ListChannels", req); err != nil {
		return nil, err
	}
	resp := &regentv1.ListChannelsResponse{Index: f.state.GetIndex()}
	for _, c := range f.state.GetChannels() {
		if req.GetCluster() == "" || c.GetCluster() == req.GetCluster() {
			resp.Channels = append(resp.Channels, c)
		}
	}
	return resp, nil
}

func (f *fakeServer) ListFailoverEvents(_ context.Context, req *regentv1.ListFailoverEventsRequest) (*regentv1.ListFailoverEventsResponse, error) {
	if err := f.record("ListFailoverEvents", req); err != nil {
		return nil, err
	}
	resp := &regentv1.ListFailoverEventsResponse{Index: f.state.GetIndex()}
	for _, e := range f.state.GetFailoverEvents() {
		if req.GetCluster() == "" || e.GetCluster() == req.GetCluster() {
			resp.FailoverEvents = append(resp.FailoverEvents, e)
		}
	}
	return resp, nil
}

func (f *fakeServer) Members(_ context.Context, req *regentv1.MembersRequest) (*regentv1.MembersResponse, error) {
	if err := f.record("Members", req); err != nil {
		return nil, err
	}
	return &regentv1.MembersResponse{Leader: f.state.GetLeader(), Members: f.state.GetMembers(), Keepers: f.keepers}, nil
}

func (f *fakeServer) RemoveMember(_ context.Context, req *regentv1.RemoveMemberRequest) (*regentv1.RemoveMemberResponse, error) {
	if err := f.record("RemoveMember", req); err != nil {
		return nil, err
	}
	return &regentv1.RemoveMemberResponse{Index: 77}, nil
}

func (f *fakeServer) Failover(_ context.Context, req *regentv1.FailoverRequest) (*regentv1.FailoverResponse, error) {
	if err := f.record("Failover", req); err != nil {
		return nil, err
	}
	return f.failover, nil
}

func (f *fakeServer) Pause(_ context.Context, req *regentv1.PauseRequest) (*regentv1.PauseResponse, error) {
	if err := f.record("Pause", req); err != nil {
		return nil, err
	}
	reason := f.paused
	if reason == "" {
		reason = req.GetReason()
	}
	return &regentv1.PauseResponse{Cluster: &regentv1.Cluster{Name: req.GetCluster(), Paused: true, PauseReason: reason}}, nil
}

func (f *fakeServer) Resume(_ context.Context, req *regentv1.ResumeRequest) (*regentv1.ResumeResponse, error) {
	if err := f.record("Resume", req); err != nil {
		return nil, err
	}
	return &regentv1.ResumeResponse{Cluster: &regentv1.Cluster{Name: req.GetCluster()}}, nil
}

func (f *fakeServer) Watch(req *regentv1.WatchRequest, stream grpc.ServerStreamingServer[regentv1.WatchEvent]) error {
	if err := f.record("Watch", req); err != nil {
		return err
	}
	for _, ev := range f.watch {
		if err := stream.Send(ev); err != nil {
			return err
		}
	}
	if f.watchEOF {
		return nil
	}
	<-stream.Context().Done()
	return stream.Context().Err()
}

// start serves f on a loopback port until the test ends and returns its address.
func start(t *testing.T, f *fakeServer) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	srv := grpc.NewServer()
	regentv1.RegisterRegentServer(srv, f)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

// deadAddr returns a loopback address where nothing listens.
func deadAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	addr := lis.Addr().String()
	if err := lis.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	return addr
}

// result is what one invocation printed and returned.
type result struct {
	code           int
	stdout, stderr string
}

// run invokes the CLI against addr with the test clock and no $REGENT_ADDR.
func run(t *testing.T, addr string, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	if addr != "" {
		args = append([]string{"--addr", addr}, args...)
	}
	getenv := func(string) string { return "" }
	code := runWith(context.Background(), args, &out, &errOut, getenv, func() time.Time { return testNow })
	return result{code, out.String(), errOut.String()}
}

func (r result) mustSucceed(t *testing.T) result {
	t.Helper()
	if r.code != ExitOK {
		t.Fatalf("exit %d, want 0\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	return r
}

// golden compares got with testdata/name, or rewrites it under -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./cli -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("output differs from %s (run go test ./cli -update if intended)\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

// cannedState is a three-region deployment with one cluster, a lagging channel and a
// history of failovers.
func cannedState() *regentv1.GetStateResponse {
	loss := func(n int64) *int64 { return &n }
	// steps returns step times at the given offsets from start, one per step from decided on.
	steps := func(start time.Duration, offsets ...time.Duration) []*regentv1.StepTime {
		out := make([]*regentv1.StepTime, len(offsets))
		for i, off := range offsets {
			out[i] = &regentv1.StepTime{Step: regentv1.FailoverStep(i + 1), At: ago(start - off)}
		}
		return out
	}
	ms := time.Millisecond
	events := []*regentv1.FailoverEvent{{
		Id: 7, Cluster: "orders", FromRegion: "eu-west", ToRegion: "us-east", FromNode: "pg-eu", ToNode: "pg-us",
		TriggerReason: "switchover requested by alice", StartedAt: ago(5 * time.Minute),
		CompletedAt: ago(5*time.Minute - 1400*ms), Step: regentv1.FailoverStep_FAILOVER_STEP_COMPLETED,
		DataLossBytes: loss(0), DataLossExact: true, Manual: true, Term: 4, FenceMethod: "sql",
		PromotedLsn: 0x16_B3000000, PromotedTimeline: 3, Published: true,
		Steps: steps(5*time.Minute, 0, 320*ms, 910*ms, 1120*ms, 1310*ms, 1400*ms),
	}, {
		Id: 6, Cluster: "orders", FromRegion: "us-east", ToRegion: "eu-west", FromNode: "pg-us", ToNode: "pg-eu",
		TriggerReason: "primary unreachable from w1, w3", StartedAt: ago(26 * time.Hour),
		CompletedAt: ago(26*time.Hour - 4*time.Second), Step: regentv1.FailoverStep_FAILOVER_STEP_COMPLETED,
		DataLossBytes: loss(18 * 1024), Term: 3, FenceMethod: "lease",
		OldPrimaryLsn: 0x15_00004800, PromotedLsn: 0x15_00000000, PromotedTimeline: 2,
		PublishError: "dns update for orders.db.example.: NOTAUTH",
		Notes: []string{
			"sql: pg-us unreachable: dial tcp 10.0.1.1:5432: i/o timeout",
			"pg-ap unreachable: not repointed",
		},
		Steps: steps(26*time.Hour, 0, 2500*ms, 3100*ms, 3400*ms, 3900*ms, 4000*ms),
	}}
	for id := uint64(1); id <= 5; id++ { // recorded without step times, as older agents did
		events = append(events, &regentv1.FailoverEvent{
			Id: id, Cluster: "orders", FromRegion: "us-east", ToRegion: "eu-west", TriggerReason: "drill",
			StartedAt: ago(time.Duration(40-id) * 24 * time.Hour), Step: regentv1.FailoverStep_FAILOVER_STEP_ABORTED,
			AbortReason: "no candidate within max_lag_on_failover",
		})
	}
	events[len(events)-1].CompletedAt = ago(35*24*time.Hour - 200*ms) // event 5

	return &regentv1.GetStateResponse{
		Leader: "w1", Index: 1234, ServedBy: "w2",
		Members: []*regentv1.MemberStatus{
			{Name: "w2", Region: "eu-west", RaftRole: "follower", Voter: true, Gossip: "alive", GrpcAddr: "10.1.0.2:7103"},
			{Name: "w1", Region: "us-east", RaftRole: "leader", Voter: true, Gossip: "alive", GrpcAddr: "10.0.0.1:7103"},
			{Name: "w3", Region: "ap-south", RaftRole: "follower", Voter: true, Gossip: "suspect", RaftAddr: "10.2.0.3:7100"},
		},
		Clusters: []*regentv1.Cluster{{
			Name: "orders", Primary: "pg-us", SpecVersion: 2,
			Refusal:   "no candidate: pg-eu lag 40.0 MiB > max_lag_on_failover 16.0 MiB",
			RefusalAt: ago(3 * time.Second),
			Nodes: []*regentv1.NodeSpec{
				{Name: "pg-us", Region: "us-east", Host: "10.0.1.1", Port: 5432},
				{Name: "pg-eu", Region: "eu-west", Host: "10.1.1.1", Port: 5432},
				{Name: "pg-ap", Region: "ap-south", Host: "fd00::3", Port: 5433},
			},
			NodeStatus: []*regentv1.NodeStatus{{
				Name: "pg-eu", Role: regentv1.NodeRole_NODE_ROLE_REPLICA, Timeline: 3,
				ReplayLsn: 0x16_B3740000, ReceivedLsn: 0x16_B374D848,
				Votes: []*regentv1.Vote{{Witness: "w3", Reachable: false}, {Witness: "w1", Reachable: true}, {Witness: "w2", Reachable: true}},
			}, {
				Name: "pg-us", Role: regentv1.NodeRole_NODE_ROLE_PRIMARY, Timeline: 3, CurrentLsn: 0x16_B374D848,
				Votes: []*regentv1.Vote{{Witness: "w1", Reachable: true}, {Witness: "w2", Reachable: true}, {Witness: "w3", Reachable: true}},
			}},
		}, {
			Name: "billing", Primary: "b1", SpecVersion: 1, Paused: true, PauseReason: "disk replacement on b1 (alice)",
			Refusal: "paused", RefusalAt: ago(50 * time.Hour),
			Nodes: []*regentv1.NodeSpec{{Name: "b1", Region: "us-east", Host: "b1.internal", Port: 5432}},
		}},
		Channels: []*regentv1.ReplicationChannel{{
			Id: 2, Cluster: "orders", PrimaryRegion: "us-east", SecondaryRegion: "ap-south",
			Status: regentv1.ChannelStatus_CHANNEL_STATUS_LAGGING, PrimaryLsn: 0x16_B374D848, ApplyLsn: 0x16_A0000000,
			LagSeconds: 95, LagBytes: 0x16_B374D848 - 0x16_A0000000, EstimatedLagSeconds: 88.5, LastSeenAt: ago(2 * time.Second),
		}, {
			Id: 1, Cluster: "orders", PrimaryRegion: "us-east", SecondaryRegion: "eu-west",
			Status: regentv1.ChannelStatus_CHANNEL_STATUS_ACTIVE, PrimaryLsn: 0x16_B374D848, ApplyLsn: 0x16_B3740000,
			LagSeconds: 0, LagBytes: 0xD848, EstimatedLagSeconds: 0.25, LastSeenAt: ago(1500 * time.Millisecond),
		}},
		FailoverEvents: events,
	}
}

// cannedKeepers are the keepers a witness's gossip knows: one alive, one whose host is lost,
// one stopped by its operator.
func cannedKeepers() []*regentv1.KeeperMember {
	return []*regentv1.KeeperMember{
		{Cluster: "orders", Node: "pg-us", KeeperAddr: "10.0.1.1:8009", HttpAddr: "10.0.1.1:8008", GossipAddr: "10.0.1.1:7301",
			Gossip: "alive", Since: ago(26 * time.Hour)},
		{Cluster: "orders", Node: "pg-eu", KeeperAddr: "10.1.1.1:8009", HttpAddr: "10.1.1.1:8008", GossipAddr: "10.1.1.1:7301",
			Gossip: "dead", Since: ago(12 * time.Second)},
		{Cluster: "billing", Node: "b1", KeeperAddr: "b1.internal:8009", GossipAddr: "b1.internal:7301", Gossip: "left", Since: ago(5 * time.Minute)},
	}
}

func TestStatusTable(t *testing.T) {
	st := cannedState()
	st.Keepers = cannedKeepers() // a KEEPER column: pg-us alive, pg-eu dead, pg-ap not in gossip
	f := &fakeServer{state: st}
	r := run(t, start(t, f), "status").mustSucceed(t)
	golden(t, "status.txt", r.stdout)
	for _, want := range []string{
		"leader: w1   index: 1234",
		"w1    us-east   leader",
		"pg-eu  eu-west   10.1.1.1:5432   replica  3         16/B3740000  54.1 KiB  w1✓ w2✓ w3✗",
		"FAILOVER EVENTS (last 5 of 7",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("status output lacks %q:\n%s", want, r.stdout)
		}
	}
	if got := f.got(); len(got) != 1 || got[0].req.(*regentv1.GetStateRequest).GetRead().GetConsistent() {
		t.Errorf("calls = %v, want one GetState without consistent", got)
	}
}

func TestListTables(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"members", []string{"members"}},
		{"cluster_list", []string{"cluster", "list"}},
		{"channels", []string{"channels"}},
		{"events", []string{"events"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeServer{state: cannedState(), keepers: cannedKeepers()}
			r := run(t, start(t, f), tc.args...).mustSucceed(t)
			golden(t, tc.name+".txt", r.stdout)
		})
	}
}

func TestEmptyLists(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"cluster", "list"}, "no clusters (apply one with: regent cluster apply -f spec.yaml)\n"},
		{[]string{"channels"}, noChannels + "\n"},
		{[]string{"channels", "--cluster", "x"}, "no replication channels for cluster x\n"},
		{[]string{"events"}, "no failover events\n"},
		{[]string{"events", "--cluster", "x"}, "no failover events for cluster x\n"},
		{[]string{"members"}, "leader: none (election in progress)\nno members\n"},
	} {
		f := &fakeServer{state: &regentv1.GetStateResponse{}}
		r := run(t, start(t, f), tc.args...).mustSucceed(t)
		if r.stdout != tc.want {
			t.Errorf("%v: stdout = %q, want %q", tc.args, r.stdout, tc.want)
		}
	}
	f := &fakeServer{state: &regentv1.GetStateResponse{}}
	golden(t, "status_empty.txt", run(t, start(t, f), "status").mustSucceed(t).stdout)
}

// jsonObject decodes s, failing the test when it is not one JSON object.
func jsonObject(t *testing.T, s string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		t.Fatalf("not a JSON object: %v\n%s", err, s)
	}
	return m
}

func hasKeys(t *testing.T, where string, m map[string]any, keys ...string) {
	t.Helper()
	for _, k := range keys {
		if _, ok := m[k]; !ok {
			t.Errorf("%s lacks key %q: %v", where, k, m)
		}
	}
}

func TestStatusJSON(t *testing.T) {
	st := cannedState()
	st.Members = append(st.Members, &regentv1.MemberStatus{Name: "w4"}) // all zero but the name
	f := &fakeServer{state: st}
	r := run(t, start(t, f), "-o", "json", "status").mustSucceed(t)
	if !strings.Contains(r.stdout, "\n  \"leader\": \"w1\",\n") {
		t.Errorf("want multi-line indented JSON, got:\n%s", r.stdout)
	}
	m := jsonObject(t, r.stdout)
	hasKeys(t, "status", m, "leader", "members", "clusters", "channels", "failover_events", "index", "served_by")
	for _, v := range m["members"].([]any) {
		hasKeys(t, "member", v.(map[string]any), "name", "region", "raft_role", "voter", "gossip", "grpc_addr")
	}
	for _, v := range m["clusters"].([]any) {
		hasKeys(t, "cluster", v.(map[string]any), "name", "primary", "nodes", "paused", "spec_version", "node_status")
	}
	w4 := m["members"].([]any)[3].(map[string]any)
	if w4["voter"] != false || w4["region"] != "" || w4["raft_role"] != "" {
		t.Errorf("zero-valued member fields not emitted as zero: %v", w4)
	}

	// An empty state still names every key, with zero values.
	f = &fakeServer{state: &regentv1.GetStateResponse{}}
	r = run(t, start(t, f), "status", "-o", "json").mustSucceed(t) // -o after the command
	m = jsonObject(t, r.stdout)
	hasKeys(t, "empty status", m, "leader", "members", "clusters", "channels", "failover_events", "index")
	if m["leader"] != "" || m["index"] != "0" || len(m["clusters"].([]any)) != 0 || len(m["failover_events"].([]any)) != 0 {
		t.Errorf("empty status JSON = %v", m)
	}
}

func TestJSONOtherCommands(t *testing.T) {
	for _, tc := range []struct {
		args []string
		keys []string
	}{
		{[]string{"members"}, []string{"leader", "members"}},
		{[]string{"cluster", "list"}, []string{"clusters", "index"}},
		{[]string{"channels"}, []string{"channels", "index"}},
		{[]string{"events"}, []string{"failover_events", "index"}},
		{[]string{"cluster", "delete", "orders"}, []string{"index"}},
		{[]string{"members", "remove", "w3"}, []string{"index"}},
	} {
		f := &fakeServer{state: cannedState()}
		r := run(t, start(t, f), append(tc.args, "-o", "json")...).mustSucceed(t)
		hasKeys(t, strings.Join(tc.args, " "), jsonObject(t, r.stdout), tc.keys...)
	}
}

func TestAddr(t *testing.T) {
	fromEnv := &fakeServer{state: cannedState()}
	envAddr := start(t, fromEnv)
	fromFlag := &fakeServer{state: cannedState()}
	flagAddr := start(t, fromFlag)
	t.Setenv(AddrEnv, envAddr)

	// Through the public entry point, so the real environment is read.
	var out, errOut bytes.Buffer
	if code := Run(context.Background(), []string{"status"}, &out, &errOut); code != ExitOK {
		t.Fatalf("status with $%s: exit %d: %s", AddrEnv, code, errOut.String())
	}
	if n := len(fromEnv.got()); n != 1 {
		t.Fatalf("server at $%s got %d calls, want 1", AddrEnv, n)
	}

	for _, args := range [][]string{
		{"--addr", flagAddr, "status"},
		{"status", "--addr", flagAddr},
		{"--addr=" + flagAddr, "cluster", "list"},
		{"cluster", "delete", "orders", "--addr", flagAddr},
	} {
		out.Reset()
		errOut.Reset()
		if code := Run(context.Background(), args, &out, &errOut); code != ExitOK {
			t.Fatalf("%v: exit %d: %s", args, code, errOut.String())
		}
	}
	if n := len(fromEnv.got()); n != 1 {
		t.Errorf("--addr did not override $%s: its server got %d calls, want still 1", AddrEnv, n)
	}
	if n := len(fromFlag.got()); n != 4 {
		t.Errorf("server at --addr got %d calls, want 4", n)
	}
	if got := fromFlag.got()[3].req.(*regentv1.DeleteClusterRequest).GetName(); got != "orders" {
		t.Errorf("delete sent name %q, want orders", got)
	}
}

func TestUsageErrors(t *testing.T) {
	f := &fakeServer{state: cannedState()}
	addr := start(t, f)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "no command given"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"--bogus", "status"}, "flag provided but not defined: -bogus"},
		{[]string{"status", "--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"status", "extra"}, `status takes no arguments, got "extra"`},
		{[]string{"-o", "yaml", "status"}, `-o "yaml": want table or json`},
		{[]string{"status", "--timeout", "0s"}, "--timeout 0s: must be positive"},
		{[]string{"status", "--timeout", "soon"}, `invalid value "soon" for flag -timeout`},
		{[]string{"members", "remove"}, "members remove takes exactly one NAME"},
		{[]string{"members", "kick", "w1"}, `unknown members subcommand "kick"`},
		{[]string{"cluster"}, "cluster needs a subcommand"},
		{[]string{"cluster", "apply"}, "cluster apply needs -f FILE"},
		{[]string{"cluster", "list", "-f", "x.yaml"}, "-f is for cluster apply only"},
		{[]string{"cluster", "delete"}, "cluster delete takes exactly one NAME"},
		{[]string{"cluster", "explode"}, `unknown cluster subcommand "explode"`},
		{[]string{"events", "orders"}, `events takes no arguments, got "orders" (filter with --cluster C)`},
		{[]string{"watch", "--from", "-1"}, `invalid value "-1" for flag -from`},
		{[]string{"events", "--watch=maybe"}, `invalid boolean value "maybe" for -watch`},
		{[]string{"failover"}, "failover needs --cluster C"},
		{[]string{"failover", "--to", "pg-eu", "--force"}, "failover needs --cluster C"},
		{[]string{"failover", "orders"}, `failover takes no arguments, got "orders" (name the cluster with --cluster C)`},
		{[]string{"failover", "--cluster", "orders", "--force=sure"}, `invalid boolean value "sure" for -force`},
		{[]string{"failover", "--cluster", "orders", "--to"}, "flag needs an argument: -to"},
		{[]string{"pause"}, "pause needs --cluster C"},
		{[]string{"pause", "--reason", "maintenance"}, "pause needs --cluster C"},
		{[]string{"pause", "--cluster", "orders", "now"}, `pause takes no arguments, got "now"`},
		{[]string{"resume"}, "resume needs --cluster C"},
		{[]string{"resume", "--cluster", "orders", "--reason", "x"}, "flag provided but not defined: -reason"},
		{[]string{"-o", "yaml", "failover", "--cluster", "orders"}, `-o "yaml": want table or json`},
	} {
		args := append([]string{"--addr", addr}, tc.args...)
		r := run(t, "", args...)
		if r.code != ExitUsage {
			t.Errorf("%v: exit %d, want %d (stderr %q)", tc.args, r.code, ExitUsage, r.stderr)
		}
		if !strings.Contains(r.stderr, "regent: "+tc.want) {
			t.Errorf("%v: stderr = %q, want it to contain %q", tc.args, r.stderr, tc.want)
		}
		if r.stdout != "" {
			t.Errorf("%v: stdout = %q, want nothing", tc.args, r.stdout)
		}
	}
	r := run(t, "", "--addr", "no-port", "status")
	if r.code != ExitUsage || !strings.Contains(r.stderr, `--addr "no-port": want HOST:PORT`) {
		t.Errorf("--addr without port: exit %d, stderr %q", r.code, r.stderr)
	}
	if got := f.got(); len(got) != 0 {
		t.Errorf("usage errors reached the server: %v", got)
	}
}

func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"-h"}, {"help"}, {"--help"}} {
		r := run(t, "", args...).mustSucceed(t)
		for _, c := range Commands() {
			for _, u := range c.Usages {
				if !strings.Contains(r.stdout, u) {
					t.Errorf("%v: help lacks %q", args, u)
				}
			}
		}
	}
	for _, args := range [][]string{{"help", "watch"}, {"watch", "-h"}} {
		r := run(t, "", args...).mustSucceed(t)
		if !strings.Contains(r.stdout, "Usage: regent watch [--from N]") || !strings.Contains(r.stdout, "--from index") {
			t.Errorf("%v: help = %q", args, r.stdout)
		}
	}
	golden(t, "usage.txt", run(t, "", "help").stdout)
}

func TestSubcommand(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"status"}, "status"},
		{[]string{"--addr", "h:1", "-o", "json", "cluster", "list"}, "cluster"},
		{[]string{"--addr=h:1", "--consistent", "--timeout", "3s", "events"}, "events"},
		{[]string{"-o=json", "agent"}, "agent"},
		{[]string{"--", "watch"}, "watch"},
		{[]string{"--addr", "h:1"}, ""},
		{nil, ""},
	} {
		if got := Subcommand(tc.args); got != tc.want {
			t.Errorf("Subcommand(%q) = %q, want %q", tc.args, got, tc.want)
		}
	}
	names := map[string]bool{}
	for _, c := range Commands() {
		names[c.Name] = true
	}
	for _, n := range []string{"status", "members", "cluster", "channels", "events", "watch", "failover", "pause", "resume"} {
		if !names[n] {
			t.Errorf("Commands() lacks %q", n)
		}
	}
}

func TestConsistentAndFilter(t *testing.T) {
	f := &fakeServer{state: cannedState()}
	addr := start(t, f)
	run(t, addr, "--consistent", "status").mustSucceed(t)
	run(t, addr, "channels", "--consistent", "--cluster", "orders").mustSucceed(t)
	run(t, addr, "events", "--cluster=orders").mustSucceed(t)
	run(t, addr, "cluster", "list", "--consistent").mustSucceed(t)
	got := f.got()
	if len(got) != 4 {
		t.Fatalf("got %d calls, want 4", len(got))
	}
	if !got[0].req.(*regentv1.GetStateRequest).GetRead().GetConsistent() {
		t.Error("status --consistent did not set read.consistent")
	}
	if ch := got[1].req.(*regentv1.ListChannelsRequest); !ch.GetRead().GetConsistent() || ch.GetCluster() != "orders" {
		t.Errorf("channels request = %v", ch)
	}
	if ev := got[2].req.(*regentv1.ListFailoverEventsRequest); ev.GetRead().GetConsistent() || ev.GetCluster() != "orders" {
		t.Errorf("events request = %v", ev)
	}
	if !got[3].req.(*regentv1.ListClustersRequest).GetRead().GetConsistent() {
		t.Error("cluster list --consistent did not set read.consistent")
	}
}

func TestUnavailableHint(t *testing.T) {
	addr := deadAddr(t)
	r := run(t, addr, "status")
	if r.code != ExitError {
		t.Fatalf("exit %d, want %d", r.code, ExitError)
	}
	for _, want := range []string{"regent: get state: ", "hint: is a regent agent running at " + addr + "?", "--addr", AddrEnv} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
		}
	}
}

func TestServerErrors(t *testing.T) {
	bad, err := status.New(codes.InvalidArgument, "nodes[1].port: 0 is out of range 1-65535").WithDetails(
		&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
			{Field: "spec.nodes[1].port", Description: "0 is out of range 1-65535"},
		}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		err  error
		args []string
		want []string
	}{
		{bad.Err(), []string{"cluster", "delete", "orders"}, []string{
			"regent: delete cluster orders: invalid argument: nodes[1].port: 0 is out of range 1-65535\n",
			"  field spec.nodes[1].port: 0 is out of range 1-65535\n"}},
		{status.Error(codes.InvalidArgument, "name: must not be empty"), []string{"members", "remove", "x"}, []string{
			"regent: remove member x: invalid argument: name: must not be empty\n"}},
		{status.Error(codes.NotFound, `cluster "nope" not found`), []string{"cluster", "delete", "nope"}, []string{
			"regent: delete cluster nope: cluster \"nope\" not found\n"}},
		{status.Error(codes.DeadlineExceeded, "context deadline exceeded"), []string{"events"}, []string{
			"regent: list failover events: context deadline exceeded\n", "raise --timeout"}},
		{status.Error(codes.Unavailable, "no leader"), []string{"watch"}, []string{
			"regent: watch: no leader\n", "hint: is a regent agent running at"}},
	} {
		f := &fakeServer{state: cannedState(), err: tc.err}
		r := run(t, start(t, f), tc.args...)
		if r.code != ExitError {
			t.Errorf("%v: exit %d, want %d", tc.args, r.code, ExitError)
		}
		for _, w := range tc.want {
			if !strings.Contains(r.stderr, w) {
				t.Errorf("%v: stderr lacks %q:\n%s", tc.args, w, r.stderr)
			}
		}
	}
}

const validSpec = `name: orders
primary: pg-us
nodes:
  - {name: pg-us, region: us-east, host: 10.0.1.1, port: 5432}
  - {name: pg-eu, region: eu-west, host: 10.1.1.1, port: 5432}
`

func writeFile(t *testing.T, name, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestClusterApply(t *testing.T) {
	path := writeFile(t, "orders.yaml", validSpec)

	f := &fakeServer{apply: &regentv1.ApplyClusterResponse{Created: true, Index: 9,
		Cluster: &regentv1.Cluster{Name: "orders", SpecVersion: 1}}}
	r := run(t, start(t, f), "cluster", "apply", "-f", path).mustSucceed(t)
	if r.stdout != "cluster orders created (spec version 1)\n" || r.stderr != "" {
		t.Errorf("stdout %q stderr %q", r.stdout, r.stderr)
	}
	got := f.got()
	if len(got) != 1 || got[0].method != "ApplyCluster" {
		t.Fatalf("calls = %v, want one ApplyCluster", got)
	}
	sent := got[0].req.(*regentv1.ApplyClusterRequest).GetSpec()
	if sent.GetName() != "orders" || sent.GetPrimary() != "pg-us" || len(sent.GetNodes()) != 2 ||
		sent.GetNodes()[1].GetPort() != 5432 {
		t.Errorf("sent spec = %v", sent)
	}

	f = &fakeServer{apply: &regentv1.ApplyClusterResponse{Created: false, Index: 12,
		Cluster:  &regentv1.Cluster{Name: "orders", SpecVersion: 3},
		Warnings: []string{"spec primary pg-us differs from the current primary pg-eu", "second"}}}
	r = run(t, start(t, f), "cluster", "apply", "-f", path).mustSucceed(t)
	if r.stdout != "cluster orders updated (spec version 3)\n" {
		t.Errorf("stdout = %q", r.stdout)
	}
	if r.stderr != "warning: spec primary pg-us differs from the current primary pg-eu\nwarning: second\n" {
		t.Errorf("stderr = %q", r.stderr)
	}
	r = run(t, start(t, f), "cluster", "apply", "-o", "json", "-f", path).mustSucceed(t)
	hasKeys(t, "apply", jsonObject(t, r.stdout), "cluster", "created", "warnings", "index")
}

func TestClusterApplyInvalidSendsNothing(t *testing.T) {
	bad := writeFile(t, "bad.yaml", validSpec+"colour: red\n")
	f := &fakeServer{apply: &regentv1.ApplyClusterResponse{}}
	addr := start(t, f)
	r := run(t, addr, "cluster", "apply", "-f", bad)
	if r.code != ExitError {
		t.Errorf("exit %d, want %d", r.code, ExitError)
	}
	if want := "regent: " + bad + ":6:"; !strings.Contains(r.stderr, want) {
		t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
	}
	r = run(t, addr, "cluster", "apply", "-f", filepath.Join(t.TempDir(), "missing.yaml"))
	if r.code != ExitError || !strings.Contains(r.stderr, "missing.yaml") {
		t.Errorf("missing file: exit %d, stderr %q", r.code, r.stderr)
	}
	if got := f.got(); len(got) != 0 {
		t.Errorf("an invalid spec reached the server: %v", got)
	}
}

// syncBuffer is a bytes.Buffer safe to read while the CLI writes to it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func watchEvents() []*regentv1.WatchEvent {
	return []*regentv1.WatchEvent{
		{Index: 10, Kind: "snapshot", State: &regentv1.State{
			Clusters: []*regentv1.Cluster{{Name: "orders"}},
			Members:  []*regentv1.Member{{Name: "w1"}, {Name: "w2"}, {Name: "w3"}},
		}},
		{Index: 11, Kind: "cluster", Key: "orders", Cluster: &regentv1.Cluster{Name: "orders", SpecVersion: 2}},
		{Index: 12, Kind: "member", Key: "w3", Deleted: true},
	}
}

func TestWatchStopsOnCancel(t *testing.T) {
	f := &fakeServer{watch: watchEvents()}
	addr := start(t, f)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errOut syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- runWith(ctx, []string{"--addr", addr, "watch", "--from", "9"}, &out, &errOut,
			func(string) string { return "" }, func() time.Time { return testNow })
	}()

	want := "10 snapshot - clusters=1 members=3 channels=0 failover_events=0\n" +
		"11 cluster orders\n" +
		"12 member w3 deleted\n"
	deadline := time.Now().Add(10 * time.Second)
	for out.String() != want {
		if time.Now().After(deadline) {
			t.Fatalf("watch printed %q, want %q (stderr %q)", out.String(), want, errOut.String())
		}
		select {
		case code := <-done:
			t.Fatalf("watch ended early with %d: stdout %q stderr %q", code, out.String(), errOut.String())
		case <-time.After(10 * time.Millisecond): // poll interval
		}
	}
	cancel()
	select {
	case code := <-done:
		if code != ExitOK || errOut.String() != "" {
			t.Errorf("after cancel: exit %d, stderr %q; want 0 and nothing", code, errOut.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("watch did not return after its context was cancelled")
	}
	if got := f.got(); len(got) != 1 || got[0].req.(*regentv1.WatchRequest).GetFromIndex() != 9 {
		t.Errorf("calls = %v, want one Watch from 9", got)
	}
}

func TestWatchJSON(t *testing.T) {
	f := &fakeServer{watch: watchEvents(), watchEOF: true}
	r := run(t, start(t, f), "watch", "-o", "json").mustSucceed(t)
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("want 3 lines, got %d:\n%s", len(lines), r.stdout)
	}
	for i, l := range lines {
		m := jsonObject(t, l)
		hasKeys(t, fmt.Sprintf("line %d", i+1), m, "index", "kind", "key", "deleted", "cluster", "state")
		if want := fmt.Sprint(10 + i); m["index"] != want {
			t.Errorf("line %d: index %v, want %s", i+1, m["index"], want)
		}
	}
	if got := f.got(); len(got) != 1 || got[0].req.(*regentv1.WatchRequest).GetFromIndex() != 0 {
		t.Errorf("calls = %v, want one Watch from 0", got)
	}
}

func TestFormatters(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{formatLSN(0x16_B374D848), "16/B374D848"},
		{formatLSN(0x3000060), "0/3000060"},
		{formatLSN(0), "-"},
		{formatBytes(0), "0 B"},
		{formatBytes(1023), "1023 B"},
		{formatBytes(18 * 1024), "18.0 KiB"},
		{formatBytes(16 << 20), "16.0 MiB"},
		{formatBytes(3 << 40), "3.0 TiB"},
		{formatDuration(350 * time.Millisecond), "350ms"},
		{formatDuration(1400 * time.Millisecond), "1.4s"},
		{formatDuration(42 * time.Second), "42s"},
		{formatDuration(5 * time.Minute), "5m"},
		{formatDuration(4*time.Minute + 30*time.Second), "4m30s"},
		{formatDuration(2*time.Hour + 5*time.Minute), "2h5m"},
		{formatDuration(26 * time.Hour), "1d2h"},
		{formatDuration(72 * time.Hour), "3d"},
		{age(nil, testNow), "-"},
		{age(ago(300*time.Millisecond), testNow), "just now"},
		{age(ago(95*time.Second), testNow), "1m35s ago"},
		{age(ago(1500*time.Millisecond), testNow), "1s ago"},
		{formatSeconds(0), "0s"},
		{formatSeconds(0.25), "250ms"},
		{age(ago(-time.Minute), testNow), "in 1m"},
		{formatVotes(nil), "-"},
		{joinHostPort("fd00::1", 5432), "[fd00::1]:5432"},
		{joinHostPort("", 0), "-"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}
