package spec_test

import (
	"errors"
	"fmt"

	"github.com/regentdb/regent/spec"
)

func ExampleParse() {
	s, err := spec.Parse([]byte(`
name: orders
primary: pg-us
nodes:
  - {name: pg-us, region: us-east, host: 10.0.0.1, port: 5432}
  - {name: pg-eu, region: eu-west, host: 10.0.0.2, port: 5432}
policy:
  down_after: 3s
`), "orders.yaml")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(s.GetName(), len(s.GetNodes()), s.GetPolicy().GetDownAfterMs(), s.GetPolicy().GetProbeIntervalMs())

	_, err = spec.Parse([]byte("name: orders\nprimary: a\nnodes:\n  - {name: a, region: r, host: h, prot: 5432}\n"), "orders.yaml")
	fmt.Println(errors.Is(err, spec.ErrInvalid))
	fmt.Println(err)
	// Output:
	// orders 2 3000 500
	// true
	// orders.yaml:4: unknown key "prot" in node 1 (known: name, region, host, port, keeper_addr, tags, priority)
	// orders.yaml:4: missing required key "port" in node 1
}
