// Package probe probes PostgreSQL nodes: is the node reachable, is it a
// primary or a standby, where is its WAL (current, received, replayed), on
// which timeline, of which cluster (system identifier), streaming from
// where, with replay paused or not.
//
// A Prober keeps one pgx connection per target and runs one query per probe
// (prepared once per connection, then one round trip) under a hard timeout
// that covers connecting too; work a timed-out probe started (a cancelled
// query, a connection attempt) may outlive it, so a slow server is probed
// more slowly instead of with more connections. A Loop probes a set of targets every interval, each in its
// own goroutine, so a hung node delays nothing but its own probes.
// Failures are classified (Classify) into a few ErrorClasses for votes,
// metrics and alerts. See DESIGN.md for the reasoning.
package probe
