// Package bench holds end-to-end benchmarks of regent over real loopback TCP. Figures and the
// commands that reproduce them are in BENCHMARKS.md.
package bench

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/regentdb/regent/internal/witnesstest"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

func spec(name string) *regentv1.ClusterSpec {
	return &regentv1.ClusterSpec{
		Name: name, Primary: "pg-us",
		Nodes: []*regentv1.NodeSpec{
			{Name: "pg-us", Region: "us-east", Host: "127.0.0.1", Port: 5432},
			{Name: "pg-eu", Region: "eu-west", Host: "127.0.0.1", Port: 5433},
			{Name: "pg-ap", Region: "ap-south", Host: "127.0.0.1", Port: 5434},
		},
	}
}

func cluster(b *testing.B) (*witnesstest.Cluster, int) {
	b.Helper()
	c := witnesstest.Start(b, 3, witnesstest.Options{})
	leader := c.WaitLeader(60 * time.Second)
	c.WaitReady(60 * time.Second)
	c.WaitMembers(60 * time.Second)
	return c, leader
}

func apply(ctx context.Context, c regentv1.RegentClient, name string) error {
	for {
		_, err := c.ApplyCluster(ctx, &regentv1.ApplyClusterRequest{Spec: spec(name)})
		if status.Code(err) != codes.Unavailable || ctx.Err() != nil {
			return err
		}
	}
}

// BenchmarkWrites measures committed ApplyCluster writes through the gRPC API of a 3-witness
// loopback cluster: each op is one Raft commit on a quorum and its FSM result. Clients send to
// the leader directly ("leader") or to a follower that forwards ("follower").
func BenchmarkWrites(b *testing.B) {
	for _, target := range []string{"leader", "follower"} {
		for _, clients := range []int{1, 16} {
			b.Run(fmt.Sprintf("to=%s/clients=%d", target, clients), func(b *testing.B) {
				c, leader := cluster(b)
				node := leader
				if target == "follower" {
					node = c.Follower(leader)
				}
				client := c.Client(node)
				ctx := context.Background()
				var seq atomic.Int64
				b.ResetTimer()
				start := time.Now()
				var wg sync.WaitGroup
				per := b.N / clients
				extra := b.N % clients
				for w := range clients {
					n := per
					if w < extra {
						n++
					}
					wg.Add(1)
					go func() {
						defer wg.Done()
						for range n {
							if err := apply(ctx, client, fmt.Sprintf("c%d", seq.Add(1)%500)); err != nil {
								b.Error(err)
								return
							}
						}
					}()
				}
				wg.Wait()
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "writes/s")
			})
		}
	}
}

// BenchmarkGetStateOnFollower measures GetState latency on a follower holding 100 clusters while
// 16 readers call it concurrently and a writer commits on the leader; it reports p50 and p99.
func BenchmarkGetStateOnFollower(b *testing.B) {
	c, leader := cluster(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for k := range 100 {
		if err := apply(ctx, c.Client(leader), fmt.Sprintf("c%03d", k)); err != nil {
			b.Fatal(err)
		}
	}
	f := c.Follower(leader)
	witnesstest.Eventually(b, 30*time.Second, "follower has the clusters", func() bool {
		return len(c.Agents[f].FSM().Clusters()) == 100
	})
	client := c.Client(f)
	writerDone := make(chan struct{})
	go func() { // background write load
		defer close(writerDone)
		for k := 0; ctx.Err() == nil; k++ {
			_ = apply(ctx, c.Client(leader), fmt.Sprintf("c%03d", k%100))
		}
	}()
	var mu sync.Mutex
	lat := make([]time.Duration, 0, b.N)
	b.SetParallelism(8) // 8 × GOMAXPROCS readers
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		local := make([]time.Duration, 0, 1024)
		for pb.Next() {
			t0 := time.Now()
			if _, err := client.GetState(ctx, &regentv1.GetStateRequest{}); err != nil {
				b.Error(err)
				return
			}
			local = append(local, time.Since(t0))
		}
		mu.Lock()
		lat = append(lat, local...)
		mu.Unlock()
	})
	b.StopTimer()
	cancel()
	<-writerDone
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	if len(lat) > 0 {
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	}
}
