// Package deploy holds deployment files; its test keeps the examples loadable.
package deploy

import (
	"path/filepath"
	"testing"

	"github.com/regentdb/regent/config"
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
}
