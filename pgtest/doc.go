// Package pgtest runs real PostgreSQL servers on loopback for tests and for
// `regent lab`: a primary made with initdb, streaming standbys made with
// pg_basebackup, and unrelated primaries whose system identifier differs.
//
// Each postmaster runs in its own directory under one base directory (mode
// 0755) on a free port of its own loopback address (127.0.0.N), in its own process group, so that Close can
// always take every process down. When the caller is root, every PostgreSQL
// program (initdb, postgres, pg_basebackup, pg_rewind, ...) runs as the
// "postgres" OS user, because initdb and postgres refuse to run as root.
//
// Per-node settings (port, listen address, socket directory, cluster_name)
// are passed on the postgres command line rather than written to
// postgresql.conf, so that copying a data directory with pg_basebackup or
// pg_rewind never carries another node's port along with it. Settings shared
// by every node live in postgresql.conf.
//
// The core API (New, Bench, Server, WaitFor, WriteLoad, BlackHole) does not
// depend on package testing; Start in testing.go wraps New for tests:
// it skips when PostgreSQL is missing (fails under CI=true) and registers
// cleanup.
//
// Tests wait by polling a condition with a deadline (WaitFor), never by
// sleeping.
package pgtest
