package traffic

import (
	"strings"
	"testing"
	"time"
)

func TestShapesGiveTheRateTheirSpecSays(t *testing.T) {
	cases := []struct {
		spec string
		at   time.Duration
		want float64
	}{
		{"constant:5", time.Hour, 5},
		{"ramp:0:10:10s", 5 * time.Second, 5},
		{"ramp:0:10:10s", time.Minute, 10},
		{"wave:10:5:4s", time.Second, 15},
		{"wave:10:5:4s", 3 * time.Second, 5},
		{"burst:1:30:60s:10s", 5 * time.Second, 30},
		{"burst:1:30:60s:10s", 15 * time.Second, 1},
	}
	for _, c := range cases {
		s, err := ParseShape(c.spec)
		if err != nil {
			t.Fatalf("%s: %v", c.spec, err)
		}
		if got := s.Rate(c.at); got < c.want-1e-9 || got > c.want+1e-9 {
			t.Errorf("%s at %s: rate %g, want %g", c.spec, c.at, got, c.want)
		}
	}
}

func TestATraceHoldsEachRowsRateUntilTheNext(t *testing.T) {
	tr, err := ReadTrace(strings.NewReader("seconds,rate\n0,1\n10,4\n20,0\n"), "t.csv")
	if err != nil {
		t.Fatal(err)
	}
	for at, want := range map[time.Duration]float64{0: 1, 9 * time.Second: 1, 10 * time.Second: 4, 25 * time.Second: 0} {
		if got := tr.Rate(at); got != want {
			t.Errorf("rate at %s = %g, want %g", at, got, want)
		}
	}
	if tr.MaxRate() != 4 {
		t.Errorf("max rate %g, want 4", tr.MaxRate())
	}
}

func TestBadShapesAreRejected(t *testing.T) {
	for _, spec := range []string{"", "constant", "constant:-1", "ramp:1:2", "wave:1:2:x", "square:1"} {
		if _, err := ParseShape(spec); err == nil {
			t.Errorf("ParseShape(%q) accepted", spec)
		}
	}
}
