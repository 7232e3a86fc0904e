package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestAgentRejectsBadConfigNamingKeyAndLine(t *testing.T) {
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	path := filepath.Join(dir, "w1.yaml")
	cfg := "node_name: w1\nregion: us-east\ndata_dir: " + dataDir + "\nraft_addr: 127.0.0.1:7101\ngossip_addr: 127.0.0.1:7102\ngrpc_addr: 127.0.0.1:7103\nhttp_addr: 127.0.0.1:7104\nbootstrap_expct: 3\n"
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	code := run([]string{"agent", "--config", path}, &out, &errOut)
	if code != 1 {
		t.Fatalf("exit %d, want 1; stderr %s", code, errOut.String())
	}
	for _, want := range []string{"line 8", `unknown key "bootstrap_expct"`} {
		if !strings.Contains(errOut.String(), want) {
			t.Errorf("stderr %q lacks %q", errOut.String(), want)
		}
	}
	if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
		t.Errorf("a rejected config created data_dir (stat err %v)", err)
	}
}

func TestAgentUsage(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"agent"}, &out, &errOut); code != 2 || !strings.Contains(errOut.String(), "--config FILE") {
		t.Errorf("exit %d, stderr %q", code, errOut.String())
	}
}

func TestHelpListsDaemonsAndClientCommands(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"help"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	for _, want := range []string{"agent --config FILE", "lab", "cluster apply -f FILE", "members remove NAME"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help lacks %q:\n%s", want, out.String())
		}
	}
}
