package traffic

import (
	"encoding/csv"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Shape is the rate at which new sessions arrive, in sessions per second,
// at an offset from the start of a run.
type Shape interface {
	Rate(t time.Duration) float64
	// MaxRate bounds Rate over the whole run (used to thin a Poisson process).
	MaxRate() float64
	String() string
}

// Constant arrives at a fixed rate.
type Constant struct{ PerSecond float64 }

func (c Constant) Rate(time.Duration) float64 { return c.PerSecond }
func (c Constant) MaxRate() float64           { return c.PerSecond }
func (c Constant) String() string             { return fmt.Sprintf("constant:%g", c.PerSecond) }

// Ramp goes linearly from From to To over Over, then stays at To.
type Ramp struct {
	From, To float64
	Over     time.Duration
}

func (r Ramp) Rate(t time.Duration) float64 {
	if r.Over <= 0 || t >= r.Over {
		return r.To
	}
	return r.From + (r.To-r.From)*float64(t)/float64(r.Over)
}
func (r Ramp) MaxRate() float64 { return math.Max(r.From, r.To) }
func (r Ramp) String() string   { return fmt.Sprintf("ramp:%g:%g:%s", r.From, r.To, r.Over) }

// Wave is Base + Amplitude*sin(2πt/Period), never below zero.
type Wave struct {
	Base, Amplitude float64
	Period          time.Duration
}

func (w Wave) Rate(t time.Duration) float64 {
	if w.Period <= 0 {
		return math.Max(w.Base, 0)
	}
	return math.Max(0, w.Base+w.Amplitude*math.Sin(2*math.Pi*float64(t)/float64(w.Period)))
}
func (w Wave) MaxRate() float64 { return math.Max(0, w.Base+math.Abs(w.Amplitude)) }
func (w Wave) String() string   { return fmt.Sprintf("wave:%g:%g:%s", w.Base, w.Amplitude, w.Period) }

// Burst runs at Peak for the first For of every Every, and at Base otherwise.
type Burst struct {
	Base, Peak float64
	Every, For time.Duration
}

func (b Burst) Rate(t time.Duration) float64 {
	if b.Every > 0 && t%b.Every < b.For {
		return b.Peak
	}
	return b.Base
}
func (b Burst) MaxRate() float64 { return math.Max(b.Base, b.Peak) }
func (b Burst) String() string {
	return fmt.Sprintf("burst:%g:%g:%s:%s", b.Base, b.Peak, b.Every, b.For)
}

// Trace is a step function read from CSV rows "seconds,rate" (a header row
// is skipped): from each row's offset the rate holds until the next row.
type Trace struct {
	Points []TracePoint
	name   string
}

// TracePoint is one row of a trace.
type TracePoint struct {
	At   time.Duration
	Rate float64
}

func (tr Trace) Rate(t time.Duration) float64 {
	i := sort.Search(len(tr.Points), func(i int) bool { return tr.Points[i].At > t })
	if i == 0 {
		return 0
	}
	return tr.Points[i-1].Rate
}

func (tr Trace) MaxRate() float64 {
	m := 0.0
	for _, p := range tr.Points {
		m = math.Max(m, p.Rate)
	}
	return m
}
func (tr Trace) String() string { return "trace:" + tr.name }

// ReadTrace parses a CSV trace.
func ReadTrace(r io.Reader, name string) (Trace, error) {
	rows, err := csv.NewReader(r).ReadAll()
	if err != nil {
		return Trace{}, err
	}
	tr := Trace{name: name}
	for i, row := range rows {
		if len(row) < 2 {
			return Trace{}, fmt.Errorf("trace row %d: want seconds,rate", i+1)
		}
		secs, err1 := strconv.ParseFloat(strings.TrimSpace(row[0]), 64)
		rate, err2 := strconv.ParseFloat(strings.TrimSpace(row[1]), 64)
		if err1 != nil || err2 != nil {
			if i == 0 {
				continue // header
			}
			return Trace{}, fmt.Errorf("trace row %d: %q is not seconds,rate", i+1, strings.Join(row, ","))
		}
		if rate < 0 {
			return Trace{}, fmt.Errorf("trace row %d: negative rate", i+1)
		}
		tr.Points = append(tr.Points, TracePoint{At: time.Duration(secs * float64(time.Second)), Rate: rate})
	}
	sort.SliceStable(tr.Points, func(i, j int) bool { return tr.Points[i].At < tr.Points[j].At })
	if len(tr.Points) == 0 {
		return Trace{}, fmt.Errorf("trace %s has no rows", name)
	}
	return tr, nil
}

// ParseShape reads a shape from the command line:
//
//	constant:RATE
//	ramp:FROM:TO:OVER                 e.g. ramp:1:20:60s
//	wave:BASE:AMPLITUDE:PERIOD        e.g. wave:10:5:2m
//	burst:BASE:PEAK:EVERY:FOR         e.g. burst:2:30:1m:10s
//	trace:FILE.csv                    rows of seconds,rate
func ParseShape(spec string) (Shape, error) {
	kind, rest, _ := strings.Cut(spec, ":")
	parts := strings.Split(rest, ":")
	num := func(i int) (float64, error) {
		if i >= len(parts) {
			return 0, fmt.Errorf("shape %q: missing field %d", spec, i+1)
		}
		v, err := strconv.ParseFloat(parts[i], 64)
		if err != nil || v < 0 {
			return 0, fmt.Errorf("shape %q: field %d must be a rate >= 0", spec, i+1)
		}
		return v, nil
	}
	dur := func(i int) (time.Duration, error) {
		if i >= len(parts) {
			return 0, fmt.Errorf("shape %q: missing field %d", spec, i+1)
		}
		d, err := time.ParseDuration(parts[i])
		if err != nil || d < 0 {
			return 0, fmt.Errorf("shape %q: field %d must be a duration", spec, i+1)
		}
		return d, nil
	}
	var errs [4]error
	switch kind {
	case "constant":
		var r float64
		r, errs[0] = num(0)
		return Constant{r}, firstErr(errs[:]...)
	case "ramp":
		var s Ramp
		s.From, errs[0] = num(0)
		s.To, errs[1] = num(1)
		s.Over, errs[2] = dur(2)
		return s, firstErr(errs[:]...)
	case "wave":
		var s Wave
		s.Base, errs[0] = num(0)
		s.Amplitude, errs[1] = num(1)
		s.Period, errs[2] = dur(2)
		return s, firstErr(errs[:]...)
	case "burst":
		var s Burst
		s.Base, errs[0] = num(0)
		s.Peak, errs[1] = num(1)
		s.Every, errs[2] = dur(2)
		s.For, errs[3] = dur(3)
		return s, firstErr(errs[:]...)
	case "trace":
		f, err := os.Open(rest)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		return ReadTrace(f, rest)
	}
	return nil, fmt.Errorf("unknown shape %q (constant, ramp, wave, burst, trace)", spec)
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}
