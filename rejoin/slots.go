package rejoin

// RemoveSlots removes every replication slot of the stopped server l (the entries of its
// pg_replslot), as a rewind does, and returns their names. A primary keeps slots for its
// standbys; once it runs as a standby itself nobody uses them, and a slot on a standby still
// holds WAL there for ever. It fails with ErrRunning while the server runs and ErrBusy while
// another operation of this package works on it.
func RemoveSlots(l Local) ([]string, error) {
	if err := l.validate(); err != nil {
		return nil, err
	}
	unlock, err := l.lockStopped()
	if err != nil {
		return nil, err
	}
	defer unlock()
	return removeSlots(l.DataDir)
}
