// Package freeport finds loopback ports that are free for both TCP and UDP, for tests and the
// local lab.
package freeport

import (
	"fmt"
	"net"
	"sync"
)

var (
	mu   sync.Mutex
	used = map[int]bool{}
)

// Get returns a loopback port that was free for TCP and UDP when checked and that this process
// has not handed out before. Another process may still take it before it is bound.
func Get() (int, error) {
	mu.Lock()
	defer mu.Unlock()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("find a free loopback port: %w", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		l.Close()
		if err != nil {
			continue
		}
		u.Close()
		if used[port] {
			continue
		}
		used[port] = true
		return port, nil
	}
	return 0, fmt.Errorf("no loopback port free for both TCP and UDP after 100 tries")
}

// Addr returns "127.0.0.1:<free port>".
func Addr() (string, error) {
	p, err := Get()
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("127.0.0.1:%d", p), nil
}
