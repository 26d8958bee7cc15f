package jobs

import (
	"strconv"
	"strings"
	"time"
)

// Progress is a job's progress as parsed from its output.
type Progress struct {
	Current float64 `json:"current"`
	Total   float64 `json:"total,omitempty"`
	Percent float64 `json:"percent,omitempty"`
	// ETA is the estimated seconds left (from the rate since the first
	// progress line), absent until it can be estimated.
	ETA *float64 `json:"eta_seconds,omitempty"`
}

// progressParser applies a service's progress rules to output lines.
type progressParser struct {
	rules   []*ProgressRule
	total   float64
	first   float64
	firstAt time.Time
	seen    bool
	cur     Progress
}

func newProgressParser(rules []*ProgressRule) *progressParser {
	p := &progressParser{rules: rules}
	for _, r := range rules {
		if r.Total > 0 {
			p.total = r.Total
		}
	}
	return p
}

func parseNum(s string) (float64, bool) {
	f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	return f, err == nil
}

// line feeds one output line; it returns the new progress when the line
// changed it.
func (p *progressParser) line(l string, now time.Time) (Progress, bool) {
	changed := false
	for _, r := range p.rules {
		m := r.re.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		if i := r.re.SubexpIndex("total"); i >= 0 && i < len(m) {
			if f, ok := parseNum(m[i]); ok && f > 0 {
				p.total = f
				changed = true
			}
		}
		if i := r.re.SubexpIndex("current"); i >= 0 && i < len(m) {
			if f, ok := parseNum(m[i]); ok {
				if !p.seen {
					p.seen, p.first, p.firstAt = true, f, now
				}
				p.cur.Current = f
				changed = true
			}
		}
	}
	if !changed || !p.seen {
		return p.cur, false
	}
	p.cur.Total = p.total
	p.cur.ETA = nil
	if p.total > 0 {
		pc := 100 * p.cur.Current / p.total
		if pc > 100 {
			pc = 100
		}
		if pc < 0 {
			pc = 0
		}
		p.cur.Percent = pc
		el := now.Sub(p.firstAt).Seconds()
		done := p.cur.Current - p.first
		if el > 0 && done > 0 {
			eta := (p.total - p.cur.Current) * el / done
			if eta < 0 {
				eta = 0
			}
			p.cur.ETA = &eta
		}
	}
	return p.cur, true
}
