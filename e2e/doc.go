// Package e2e holds regent's end-to-end tests: every part real and running together — three
// witnesses (internal/witnesstest), a PostgreSQL primary and two streaming standbys (pgtest),
// a keeper beside each server (keeper.Start) — with the cluster applied and automatic failover
// on, driven from outside the way an operator's world would: a host dies or is cut off, and
// clients must end up writing on one primary at a time. The package has no code of its own
// beyond these tests; DESIGN.md says what each test proves and how.
//
// The tests skip locally when PostgreSQL or haproxy is missing (naming the Debian package to
// install) and fail under CI=true, where scripts/test.sh installs them.
package e2e
