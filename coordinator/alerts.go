package coordinator

import (
	"fmt"
	"strconv"
	"strings"

	regentv1 "github.com/regentdb/regent/proto/regent/v1"
	"github.com/regentdb/regent/spec"
)

// Kinds of Alert.
const (
	// AlertLagOverThreshold: a channel's lag_seconds went above its cluster's
	// lag_alert_threshold (the seed's monitor_lag alert).
	AlertLagOverThreshold = "lag_over_threshold"
	// AlertLagRecovered: a channel's lag came back to lag_alert_threshold or below.
	AlertLagRecovered = "lag_recovered"
	// AlertStatusChanged: a channel's status changed (active, lagging, failed, rebuilding).
	AlertStatusChanged = "status_changed"
)

// Alert is something an operator should hear about a replication channel.
type Alert struct {
	// Kind is AlertLagOverThreshold, AlertLagRecovered or AlertStatusChanged.
	Kind string
	// Cluster, PrimaryRegion and SecondaryRegion name the channel.
	Cluster, PrimaryRegion, SecondaryRegion string
	// From and To are the channel's previous and new status (equal for lag alerts;
	// From is CHANNEL_STATUS_UNSPECIFIED for a channel that did not exist before).
	From, To regentv1.ChannelStatus
	// LagSeconds and LagBytes are the channel's new figures.
	LagSeconds int64
	LagBytes   uint64
	// ThresholdSeconds is the cluster's lag_alert_threshold in whole seconds.
	ThresholdSeconds int64
	// Message is a sentence for people, e.g. "Replication lag 75s exceeds threshold 60s
	// on channel orders us-east→eu-west".
	Message string
}

// Alerts compares channel sets before and after a commit (as the FSM holds them, any
// clusters mixed) and returns the alerts to raise, in the order of next:
//
//   - AlertLagOverThreshold when lag_seconds crosses the cluster's lag_alert_threshold
//     upwards (a new channel already over it counts as crossing), AlertLagRecovered when it
//     comes back to the threshold or below;
//   - AlertStatusChanged on any status change. A channel that appears with status active
//     raises nothing (that is the normal birth of a channel); one that appears in any other
//     status does, from CHANNEL_STATUS_UNSPECIFIED. A channel that disappears raises
//     nothing (a cluster was deleted or failed over; those have their own records).
//
// policies maps cluster names to their policy; a missing or partial policy takes the
// defaults of DESIGN.md (spec.WithDefaults).
func Alerts(prev, next []*regentv1.ReplicationChannel, policies map[string]*regentv1.Policy) []Alert {
	type key struct{ cluster, primary, secondary string }
	before := make(map[key]*regentv1.ReplicationChannel, len(prev))
	for _, ch := range prev {
		before[key{ch.GetCluster(), ch.GetPrimaryRegion(), ch.GetSecondaryRegion()}] = ch
	}
	var out []Alert
	for _, ch := range next {
		old := before[key{ch.GetCluster(), ch.GetPrimaryRegion(), ch.GetSecondaryRegion()}]
		thrMs := spec.WithDefaults(policies[ch.GetCluster()]).GetLagAlertThresholdMs()
		base := Alert{
			Cluster: ch.GetCluster(), PrimaryRegion: ch.GetPrimaryRegion(), SecondaryRegion: ch.GetSecondaryRegion(),
			From: old.GetStatus(), To: ch.GetStatus(), LagSeconds: ch.GetLagSeconds(), LagBytes: ch.GetLagBytes(),
			ThresholdSeconds: thrMs / 1000,
		}
		name := fmt.Sprintf("%s %s→%s", ch.GetCluster(), ch.GetPrimaryRegion(), ch.GetSecondaryRegion())
		thr := seconds(thrMs)
		wasOver := old != nil && old.GetLagSeconds()*1000 > thrMs
		isOver := ch.GetLagSeconds()*1000 > thrMs
		// A failed channel has no standby to measure: its lag figure is an extrapolation
		// from the primary's write rate and swings with it. The status alert says what matters,
		// so lag alerts are only raised between channels that are not failed.
		failed := ch.GetStatus() == regentv1.ChannelStatus_CHANNEL_STATUS_FAILED ||
			old.GetStatus() == regentv1.ChannelStatus_CHANNEL_STATUS_FAILED
		switch {
		case failed:
		case isOver && !wasOver:
			a := base
			a.Kind, a.From = AlertLagOverThreshold, a.To
			a.Message = fmt.Sprintf("Replication lag %ds exceeds threshold %s on channel %s", ch.GetLagSeconds(), thr, name)
			out = append(out, a)
		case wasOver && !isOver:
			a := base
			a.Kind, a.From = AlertLagRecovered, a.To
			a.Message = fmt.Sprintf("Replication lag %ds is back within threshold %s on channel %s", ch.GetLagSeconds(), thr, name)
			out = append(out, a)
		}
		if ch.GetStatus() != old.GetStatus() && (old != nil || ch.GetStatus() != regentv1.ChannelStatus_CHANNEL_STATUS_ACTIVE) {
			a := base
			a.Kind = AlertStatusChanged
			was := "new"
			if old != nil {
				was = "was " + statusName(old.GetStatus())
			}
			a.Message = fmt.Sprintf("Channel %s is %s (%s); lag %ds, %d bytes", name, statusName(ch.GetStatus()), was,
				ch.GetLagSeconds(), ch.GetLagBytes())
			out = append(out, a)
		}
	}
	return out
}

// statusName is the seed's word for a status: active, lagging, failed, rebuilding.
func statusName(s regentv1.ChannelStatus) string {
	if s == regentv1.ChannelStatus_CHANNEL_STATUS_UNSPECIFIED {
		return "unknown"
	}
	return strings.ToLower(strings.TrimPrefix(s.String(), "CHANNEL_STATUS_"))
}

// seconds formats milliseconds as seconds: "60s", "1.5s".
func seconds(ms int64) string {
	return strconv.FormatFloat(float64(ms)/1000, 'f', -1, 64) + "s"
}
