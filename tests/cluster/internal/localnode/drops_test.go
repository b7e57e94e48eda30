package localnode

import (
	"reflect"
	"testing"
)

func TestParseSSSplitsAnsweredFromUnansweredConnections(t *testing.T) {
	out := "0      0      127.10.0.9:7000 127.0.0.1:33316\n" +
		"\t bbr wscale:10,10 rto:204 segs_in:2 send 374491428571bps lastsnd:104\n" +
		"0      0      127.10.0.9:7000 127.0.0.1:33300\n" +
		"\t bbr wscale:10,10 rto:204 bytes_sent:5 bytes_acked:5 segs_out:1\n" +
		"0      12     127.10.0.9:7000 127.0.0.1:33400\n"
	got := parseSS(out)
	want := []Connection{
		{Local: "127.10.0.9:7000", Remote: "127.0.0.1:33316", BytesSent: 0},
		{Local: "127.10.0.9:7000", Remote: "127.0.0.1:33300", BytesSent: 5},
		{Local: "127.10.0.9:7000", Remote: "127.0.0.1:33400", BytesSent: 12},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("parseSS:\n got %+v\nwant %+v", got, want)
	}
}

func TestImagesResolveWithoutTagOrDockerHubPrefix(t *testing.T) {
	got := imageCandidates("docker.io/library/app:1.2@sha256:abc")
	want := []string{"docker.io/library/app:1.2@sha256:abc", "docker.io/library/app", "app", "library/app"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("imageCandidates = %v, want %v", got, want)
	}
}
