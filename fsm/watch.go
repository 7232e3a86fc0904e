package fsm

import (
	"sort"

	"google.golang.org/protobuf/proto"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
)

// Kinds of WatchEvent.
const (
	KindSnapshot      = "snapshot"
	KindCluster       = "cluster"
	KindMember        = "member"
	KindChannel       = "channel"
	KindFailoverEvent = "failover_event"
	KindAudit         = "audit"
)

// RingSize is how many recent changes the FSM remembers for ChangesSince. A watcher that
// falls further behind gets a full snapshot instead. One channel batch of a busy fleet of 1,000
// clusters is about 1,500 changes, so this holds several intervals of such a fleet.
const RingSize = 16384

// ring is a bounded FIFO of change events in index order. from is the lowest index whose
// changes, and those of every later index, are all still held.
type ring struct {
	buf   []*regentv1.WatchEvent
	start int // position of the oldest event
	n     int // number of events held
	from  uint64
}

func newRing(size int, from uint64) ring {
	return ring{buf: make([]*regentv1.WatchEvent, size), from: from}
}

func (r *ring) at(i int) *regentv1.WatchEvent { return r.buf[(r.start+i)%len(r.buf)] }

func (r *ring) add(evs []*regentv1.WatchEvent) {
	for _, ev := range evs {
		if r.n == len(r.buf) {
			old := r.buf[r.start]
			r.buf[r.start] = nil
			r.start = (r.start + 1) % len(r.buf)
			r.n--
			if old.Index+1 > r.from {
				r.from = old.Index + 1
			}
		}
		r.buf[(r.start+r.n)%len(r.buf)] = ev
		r.n++
	}
}

// reset forgets every event; changes from index from on will be held.
func (r *ring) reset(from uint64) {
	clear(r.buf)
	r.start, r.n, r.from = 0, 0, from
}

// ChangesSince returns copies of the remembered changes with an index above index, in
// order; several changes may share an index (an applied cluster and its audit record).
//
// complete is false when the FSM cannot prove it still holds every change after index —
// the ring has dropped some, or a snapshot was restored since — and the caller must first
// send a full state (State()) and then follow from its index. (A watcher that starts from
// nothing wants a full state anyway; that is the caller's decision.)
//
// wait is closed at the next Apply or Restore, so a Watch stream can block on it and call
// ChangesSince again. The events are copies the caller may keep or modify.
func (f *FSM) ChangesSince(index uint64) (events []*regentv1.WatchEvent, complete bool, wait <-chan struct{}) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	r := &f.changes
	complete = index+1 >= r.from
	first := sort.Search(r.n, func(i int) bool { return r.at(i).GetIndex() > index })
	for i := first; i < r.n; i++ {
		events = append(events, proto.Clone(r.at(i)).(*regentv1.WatchEvent))
	}
	return events, complete, f.changed
}
