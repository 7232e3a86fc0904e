package agent

import (
	"context"
	"github.com/regentdb/regent/internal/poll"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"

	"github.com/regentdb/regent/config"
	"github.com/regentdb/regent/internal/freeport"
	"github.com/regentdb/regent/logging"
)

func testConfig(t *testing.T) config.Agent {
	t.Helper()
	var addrs [4]string
	for i := range addrs {
		a, err := freeport.Addr()
		if err != nil {
			t.Fatal(err)
		}
		addrs[i] = a
	}
	return config.Agent{
		NodeName: "solo", Region: "us-east", DataDir: t.TempDir(),
		RaftAddr: addrs[0], GossipAddr: addrs[1], GRPCAddr: addrs[2], HTTPAddr: addrs[3],
		BootstrapExpect: 1, RaftMultiplier: 1, Log: config.Log{Format: "text", Level: "info"},
	}
}

func TestStartFailsCleanlyWhenAPortIsTaken(t *testing.T) {
	cfg := testConfig(t)
	l, err := net.Listen("tcp", cfg.GRPCAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, err = Start(cfg, logging.Discard())
	if err == nil || !strings.Contains(err.Error(), cfg.GRPCAddr) {
		t.Fatalf("Start with a taken gRPC port: %v", err)
	}
	// Everything it had opened is closed again: the same config starts once the port is free.
	l.Close()
	a, err := Start(cfg, logging.Discard())
	if err != nil {
		t.Fatalf("second start: %v", err)
	}
	a.Shutdown()
}

func TestSingleWitnessServesHealthAndReflection(t *testing.T) {
	cfg := testConfig(t)
	a, err := Start(cfg, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	defer a.Shutdown()
	conn, err := grpc.NewClient(cfg.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	hc := healthpb.NewHealthClient(conn)
	var resp *healthpb.HealthCheckResponse
	if !poll.Until(30*time.Second, 20*time.Millisecond, func() bool {
		resp, err = hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "regent.v1.Regent"})
		return err == nil && resp.Status == healthpb.HealthCheckResponse_SERVING
	}) {
		t.Fatalf("health never SERVING: %v %v", resp, err)
	}
	rc, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	list, err := rc.Recv()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, s := range list.GetListServicesResponse().GetService() {
		if s.GetName() == "regent.v1.Regent" {
			found = true
		}
	}
	if !found {
		t.Errorf("reflection does not list regent.v1.Regent: %v", list)
	}
}
