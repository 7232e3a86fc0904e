package pglsn

import (
	"math"
	"testing"
)

func TestParseLSN(t *testing.T) {
	tests := []struct {
		in      string
		want    uint64
		wantErr bool
	}{
		{"0/0", 0, false},
		{"0/3000060", 0x3000060, false},
		{"16/B374D848", 0x16B374D848, false},
		{"16/b374d848", 0x16B374D848, false},
		{"FFFFFFFF/FFFFFFFF", math.MaxUint64, false},
		{"00000001/00000000", 1 << 32, false},
		{"0/015167A8", 0x15167A8, false}, // pg_waldump's zero-padded form
		{"", 0, true},
		{"/", 0, true},
		{"0/", 0, true},
		{"/0", 0, true},
		{"123", 0, true},
		{"1/2/3", 0, true},
		{"G/0", 0, true},
		{"0/-1", 0, true},
		{"+1/0", 0, true},
		{"1 /0", 0, true},
		{"100000000/0", 0, true},
		{"0/100000000", 0, true},
	}
	for _, tt := range tests {
		got, err := Parse(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("Parse(%q) = %X, %v; want %X, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestFormatLSN(t *testing.T) {
	tests := []struct {
		in   uint64
		want string
	}{
		{0, "0/0"},
		{0x3000060, "0/3000060"},
		{0x16B374D848, "16/B374D848"},
		{1 << 32, "1/0"},
		{math.MaxUint64, "FFFFFFFF/FFFFFFFF"},
	}
	for _, tt := range tests {
		if got := Format(tt.in); got != tt.want {
			t.Errorf("Format(%X) = %q; want %q", tt.in, got, tt.want)
		}
		back, err := Parse(tt.want)
		if err != nil || back != tt.in {
			t.Errorf("Parse(Format(%X)) = %X, %v", tt.in, back, err)
		}
	}
}

func FuzzLSNRoundTrip(f *testing.F) {
	f.Add(uint64(0))
	f.Add(uint64(0x16B374D848))
	f.Fuzz(func(t *testing.T, v uint64) {
		got, err := Parse(Format(v))
		if err != nil || got != v {
			t.Fatalf("round trip of %X gave %X, %v", v, got, err)
		}
	})
}
