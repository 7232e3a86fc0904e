// Package deploy holds deployment files; its test keeps the examples loadable.
package deploy

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/regentdb/regent/config"
	"github.com/regentdb/regent/keeper"
	"github.com/regentdb/regent/spec"
)

func TestExamplesParse(t *testing.T) {
	agents, _ := filepath.Glob("examples/agent-*.yaml")
	if len(agents) != 3 {
		t.Fatalf("want three example agent configs, found %v", agents)
	}
	for _, p := range agents {
		if _, err := config.Load(p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
	if _, err := spec.ParseFile("examples/orders.yaml"); err != nil {
		t.Errorf("orders.yaml: %v", err)
	}
	if _, err := keeper.ParseConfig(mustRead(t, "examples/keeper-pg-us.yaml"), "examples/keeper-pg-us.yaml"); err != nil {
		t.Errorf("keeper-pg-us.yaml: %v", err)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
