package lab

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/regentdb/regent/cli"
)

func TestLabStartsWitnessesThatTakeTheExampleSpec(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	l, err := Start(ctx, Options{NoPostgres: true})
	if err != nil {
		t.Fatal(err)
	}
	dir := l.Dir
	stopped := false
	defer func() {
		if !stopped {
			l.Stop()
		}
	}()
	if err := l.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if err := l.WriteExampleSpec(); err != nil {
		t.Fatal(err)
	}
	var desc bytes.Buffer
	l.Describe(&desc)
	if !strings.Contains(desc.String(), "REGENT_ADDR="+l.Configs[0].GRPCAddr) || strings.Count(desc.String(), "grpc ") != 3 {
		t.Errorf("description:\n%s", desc.String())
	}
	addr := l.Configs[1].GRPCAddr
	var out, errOut bytes.Buffer
	if code := cli.Run(ctx, []string{"--addr", addr, "cluster", "apply", "-f", filepath.Join(dir, "orders.yaml")}, &out, &errOut); code != 0 {
		t.Fatalf("cluster apply: exit %d: %s", code, errOut.String())
	}
	out.Reset()
	if code := cli.Run(ctx, []string{"--addr", addr, "--consistent", "cluster", "list"}, &out, &errOut); code != 0 || !strings.Contains(out.String(), "orders") {
		t.Fatalf("cluster list: exit %d: %s %s", code, out.String(), errOut.String())
	}
	if err := l.Stop(); err != nil {
		t.Errorf("stop: %v", err)
	}
	stopped = true
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("temporary lab directory %s left behind", dir)
	}
}

func TestLabRestartsInItsDirectory(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	l, err := Start(ctx, Options{Dir: dir, NoPostgres: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.WaitReady(ctx); err != nil {
		l.Stop()
		t.Fatal(err)
	}
	first := l.Configs[0].GRPCAddr
	if err := l.Stop(); err != nil {
		t.Fatal(err)
	}
	l, err = Start(ctx, Options{Dir: dir, NoPostgres: true})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Stop()
	if l.Configs[0].GRPCAddr != first {
		t.Errorf("restarted lab moved w1 from %s to %s", first, l.Configs[0].GRPCAddr)
	}
	if err := l.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	for _, a := range l.Agents {
		if !a.Store().HasState() {
			t.Errorf("%s lost its raft state", a.Name())
		}
	}
}

func TestLabRejectsWitnessCount(t *testing.T) {
	if _, err := Start(context.Background(), Options{Witnesses: 4, NoPostgres: true}); err == nil || !strings.Contains(err.Error(), "3 or 5") {
		t.Errorf("4 witnesses: %v", err)
	}
}
