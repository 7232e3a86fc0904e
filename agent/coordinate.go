package agent

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/regentdb/regent/alert"
	"github.com/regentdb/regent/coordinator"
	"github.com/regentdb/regent/heartbeat"
	regentv1 "github.com/regentdb/regent/proto/regent/v1"
	"github.com/regentdb/regent/spec"
)

// leaderObserve is the leader's share of observing, run inside a leader session: it folds the
// witnesses' reports into an aggregator, commits vote flips and role changes at once, commits
// the channel figures as one batched entry per probe interval, raises alerts, and writes the
// heartbeat row on every cluster's primary each second.
type leaderObserve struct {
	a        *Agent
	agg      *coordinator.Aggregator
	rebuilds *coordinator.RebuildTracker // catch-up of rejoined old primaries
	report   chan struct{}               // signalled when a report arrived
}

// onReport is the API's report handler; it only works on the leader while a session runs.
func (a *Agent) onReport(witness string, obs []*regentv1.Observation) error {
	a.obsMu.Lock()
	lo := a.leaderObs
	a.obsMu.Unlock()
	if lo == nil {
		return fmt.Errorf("this witness is not leading (yet); retry")
	}
	lo.agg.Add(witness, obs)
	select {
	case lo.report <- struct{}{}:
	default:
	}
	return nil
}

func (a *Agent) observeAsLeader(ctx context.Context) {
	lo := &leaderObserve{a: a, agg: coordinator.NewAggregator(), rebuilds: coordinator.NewRebuildTracker(), report: make(chan struct{}, 1)}
	a.obsMu.Lock()
	a.leaderObs = lo
	a.obsMu.Unlock()
	defer func() {
		a.obsMu.Lock()
		a.leaderObs = nil
		a.obsMu.Unlock()
	}()
	hb := heartbeat.NewWriter(time.Second)
	defer hb.Close()
	var beating sync.WaitGroup
	defer beating.Wait()

	interval := spec.DefaultProbeInterval
	tick := time.NewTicker(interval)
	defer tick.Stop()
	beat := time.NewTicker(time.Second)
	defer beat.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-lo.report:
			lo.commitChanges(ctx)
		case <-tick.C:
			if iv := lo.commitChannels(ctx); iv != interval && iv > 0 {
				interval = iv
				tick.Reset(interval)
			}
		case <-beat.C:
			lo.heartbeats(ctx, hb, &beating)
		}
	}
}

func (lo *leaderObserve) commitChanges(ctx context.Context) {
	st, _ := lo.a.fsm.State()
	cmd := lo.agg.Changes(st, time.Now())
	if cmd == nil {
		return
	}
	res, err := lo.a.store.Propose(ctx, regentv1.CommandType_COMMAND_TYPE_RECORD_OBSERVATIONS, cmd, "regent/"+lo.a.cfg.NodeName)
	switch {
	case err != nil:
		lo.a.logger.Warn("commit observations", "err", err)
	case res.Err != nil:
		lo.a.logger.Error("observations rejected", "err", res.Err)
	}
}

// commitChannels commits the interval's channel figures and alerts on what changed; it returns
// the shortest probe interval among the clusters, which paces it.
func (lo *leaderObserve) commitChannels(ctx context.Context) time.Duration {
	st, _ := lo.a.fsm.State()
	shortest := time.Duration(0)
	policies := map[string]*regentv1.Policy{}
	for _, c := range st.GetClusters() {
		p := spec.WithDefaults(c.GetPolicy())
		policies[c.GetName()] = p
		if iv := time.Duration(p.GetProbeIntervalMs()) * time.Millisecond; shortest == 0 || iv < shortest {
			shortest = iv
		}
	}
	lo.agg.Retain(st) // forget observations of deleted clusters and nodes
	now := time.Now()
	// A rejoined old primary's channel stays rebuilding, with its catch-up figures, until the
	// rejoin flow records it caught up (agent/rejoin.go).
	cmd := coordinator.OverrideRebuilding(st, lo.agg.Channels(st, now), lo.rebuilds.Observe(coordinator.Rebuilds(st), now))
	if cmd == nil {
		return shortest
	}
	res, err := lo.a.store.Propose(ctx, regentv1.CommandType_COMMAND_TYPE_UPDATE_CHANNELS, cmd, "regent/"+lo.a.cfg.NodeName)
	if err != nil {
		lo.a.logger.Warn("commit channel figures", "err", err)
		return shortest
	}
	if res.Err != nil {
		lo.a.logger.Error("channel figures rejected", "err", res.Err)
		return shortest
	}
	after, _ := lo.a.fsm.State()
	for _, al := range coordinator.Alerts(st.GetChannels(), after.GetChannels(), policies) {
		lo.a.alerts.Notify(alert.Alert{
			Kind:     al.Kind,
			Severity: severity(al),
			Cluster:  al.Cluster,
			Message:  al.Message,
			Labels:   map[string]string{"primary_region": al.PrimaryRegion, "secondary_region": al.SecondaryRegion, "status": channelStatus(al.To)},
			Fields: map[string]any{"lag_seconds": al.LagSeconds, "lag_bytes": al.LagBytes, "threshold_seconds": al.ThresholdSeconds,
				"from_status": channelStatus(al.From), "to_status": channelStatus(al.To)},
		})
	}
	return shortest
}

func severity(al coordinator.Alert) string {
	switch {
	case al.To == regentv1.ChannelStatus_CHANNEL_STATUS_FAILED:
		return alert.SeverityCritical
	case al.Kind == "lag_recovered" || al.To == regentv1.ChannelStatus_CHANNEL_STATUS_ACTIVE:
		return alert.SeverityInfo
	default:
		return alert.SeverityWarning
	}
}

// channelStatus is the seed's spelling of a channel status (active, lagging, failed, rebuilding).
func channelStatus(s regentv1.ChannelStatus) string {
	switch s {
	case regentv1.ChannelStatus_CHANNEL_STATUS_ACTIVE:
		return "active"
	case regentv1.ChannelStatus_CHANNEL_STATUS_LAGGING:
		return "lagging"
	case regentv1.ChannelStatus_CHANNEL_STATUS_FAILED:
		return "failed"
	case regentv1.ChannelStatus_CHANNEL_STATUS_REBUILDING:
		return "rebuilding"
	}
	return "unknown"
}

// heartbeats writes each cluster's heartbeat row on its primary, concurrently, skipping a
// cluster whose previous write is still under way (a hung primary must not delay the others).
func (lo *leaderObserve) heartbeats(ctx context.Context, w *heartbeat.Writer, wg *sync.WaitGroup) {
	st, _ := lo.a.fsm.State()
	pg := lo.a.cfg.Postgres
	var keep []heartbeat.Target
	for _, c := range st.GetClusters() {
		var primary *regentv1.NodeSpec
		for _, n := range c.GetNodes() {
			if n.GetName() == c.GetPrimary() {
				primary = n
			}
		}
		if primary == nil {
			continue
		}
		pw, err := pg.Password(primary.GetHost(), uint16(primary.GetPort()), pg.Database, pg.User)
		if err != nil {
			lo.a.logger.Warn("read password file", "err", err)
		}
		t := heartbeat.Target{Cluster: c.GetName(), Node: primary.GetName(), Region: primary.GetRegion(),
			Host: primary.GetHost(), Port: uint16(primary.GetPort()), User: pg.User, Database: pg.Database,
			Password: pw, SSLMode: pg.SSLMode}
		keep = append(keep, t)
		if !lo.a.beatStart(t.Cluster) {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer lo.a.beatDone(t.Cluster)
			if _, err := w.Beat(ctx, t); err != nil && ctx.Err() == nil {
				lo.a.logger.Debug("heartbeat", "cluster", t.Cluster, "node", t.Node, "err", err)
			}
		}()
	}
	w.Forget(keep)
}

func (a *Agent) beatStart(cluster string) bool {
	a.obsMu.Lock()
	defer a.obsMu.Unlock()
	if a.beating[cluster] {
		return false
	}
	a.beating[cluster] = true
	return true
}

func (a *Agent) beatDone(cluster string) {
	a.obsMu.Lock()
	defer a.obsMu.Unlock()
	delete(a.beating, cluster)
}
