package source

import (
	"errors"
	"io"
	"os"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
)

// readAll parses a whole stream.
func readAll(t *testing.T, r io.Reader) []sseEvent {
	t.Helper()
	s := newSSEReader(r)
	var out []sseEvent
	for {
		ev, err := s.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("Next: %v", err)
		}
		out = append(out, ev)
	}
}

func TestSSEMarathonCapture(t *testing.T) {
	f, err := os.Open("testdata/events.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	evs := readAll(t, f)
	var types []string
	for _, ev := range evs {
		types = append(types, ev.Type)
		if eventName(ev) != ev.Type {
			t.Errorf("eventName = %q, want %q", eventName(ev), ev.Type)
		}
		if !strings.HasPrefix(ev.Data, "{") || !strings.Contains(ev.Data, `"eventType":"`+ev.Type+`"`) {
			t.Errorf("%s data = %q", ev.Type, ev.Data)
		}
	}
	want := []string{"event_stream_attached", "status_update_event", "status_update_event"}
	if !reflect.DeepEqual(types, want) {
		t.Fatalf("types = %q, want %q", types, want)
	}
}

func TestSSEParse(t *testing.T) {
	tests := []struct {
		name  string
		input string
		want  []sseEvent
	}{{
		name:  "lf",
		input: "event: a\ndata: 1\n\nevent: b\ndata: 2\n\n",
		want:  []sseEvent{{Type: "a", Data: "1"}, {Type: "b", Data: "2"}},
	}, {
		name:  "crlf",
		input: "event: a\r\ndata: 1\r\n\r\nevent: b\r\ndata: 2\r\n\r\n",
		want:  []sseEvent{{Type: "a", Data: "1"}, {Type: "b", Data: "2"}},
	}, {
		name:  "cr only",
		input: "event: a\rdata: 1\r\r",
		want:  []sseEvent{{Type: "a", Data: "1"}},
	}, {
		name:  "mixed line ends",
		input: "event: a\r\ndata: 1\n\revent: b\rdata: 2\r\n\n",
		want:  []sseEvent{{Type: "a", Data: "1"}, {Type: "b", Data: "2"}},
	}, {
		name:  "multi-line data",
		input: "event: a\ndata: {\"x\":\ndata:  1}\ndata\ndata:\n\n",
		want:  []sseEvent{{Type: "a", Data: "{\"x\":\n 1}\n\n"}},
	}, {
		name:  "comments and keep-alives",
		input: ": hello\n\r\n\r\n\n:ping\nevent: a\n: inside\ndata: 1\n\n\r\n\r\n",
		want:  []sseEvent{{Type: "a", Data: "1"}},
	}, {
		name:  "no space after colon, colon in value",
		input: "event:a\ndata:http://x:80\n\n",
		want:  []sseEvent{{Type: "a", Data: "http://x:80"}},
	}, {
		name:  "only one space is dropped",
		input: "data:   x  \n\n",
		want:  []sseEvent{{Type: "message", Data: "  x  "}},
	}, {
		name:  "event without data is not dispatched",
		input: "event: a\n\nevent: b\nid: 7\n\ndata: 1\n\n",
		want:  []sseEvent{{Type: "message", Data: "1", ID: "7"}},
	}, {
		name:  "empty data is dispatched",
		input: "event: a\ndata\n\n",
		want:  []sseEvent{{Type: "a", Data: ""}},
	}, {
		name:  "id persists, NUL id ignored",
		input: "id: 1\ndata: a\n\ndata: b\n\nid: x\x00y\ndata: c\n\nid\ndata: d\n\n",
		want: []sseEvent{
			{Type: "message", Data: "a", ID: "1"},
			{Type: "message", Data: "b", ID: "1"},
			{Type: "message", Data: "c", ID: "1"},
			{Type: "message", Data: "d", ID: ""},
		},
	}, {
		name:  "unknown fields ignored",
		input: "foo: bar\nevent: a\nEvent: b\nDATA: x\nretry: 2500\ndata: 1\n\n",
		want:  []sseEvent{{Type: "a", Data: "1"}},
	}, {
		name:  "byte order mark",
		input: "\xef\xbb\xbfevent: a\ndata: 1\n\n",
		want:  []sseEvent{{Type: "a", Data: "1"}},
	}, {
		name:  "pending event at EOF is discarded",
		input: "event: a\ndata: 1\n\nevent: b\ndata: 2\n",
		want:  []sseEvent{{Type: "a", Data: "1"}},
	}, {
		name:  "line without end at EOF is discarded",
		input: "data: 1\n\ndata: 2",
		want:  []sseEvent{{Type: "message", Data: "1"}},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := readAll(t, strings.NewReader(tc.input))
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
			// The same, one byte per read: a CRLF split over reads stays one
			// line end.
			got = readAll(t, iotest.OneByteReader(strings.NewReader(tc.input)))
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("one byte reads: got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// A line far longer than the buffer and the limits is read through and cut;
// the events around it are intact and memory stays bounded.
func TestSSELongLines(t *testing.T) {
	huge := strings.Repeat("x", 3<<20)
	input := "event: deployment_info\ndata: {\"eventType\":\"deployment_info\",\"plan\":\"" + huge + "\"}\n\n" +
		"data: " + huge + "\ndata: more\n\n" +
		"event: status_update_event\ndata: {}\n\n"
	evs := readAll(t, strings.NewReader(input))
	if len(evs) != 3 {
		t.Fatalf("got %d events", len(evs))
	}
	if evs[0].Type != "deployment_info" || !evs[0].Truncated || len(evs[0].Data) > sseMaxData {
		t.Errorf("event 0: type %q truncated %v len %d", evs[0].Type, evs[0].Truncated, len(evs[0].Data))
	}
	if evs[1].Type != "message" || !evs[1].Truncated || eventName(evs[1]) != "" {
		t.Errorf("event 1: type %q truncated %v name %q", evs[1].Type, evs[1].Truncated, eventName(evs[1]))
	}
	if evs[2].Type != "status_update_event" || evs[2].Data != "{}" || evs[2].Truncated {
		t.Errorf("event 2: %+v", evs[2])
	}
}

func TestSSEReadError(t *testing.T) {
	boom := errors.New("boom")
	s := newSSEReader(io.MultiReader(strings.NewReader("event: a\ndata: 1\n\nevent: b\n"), iotest.ErrReader(boom)))
	if ev, err := s.Next(); err != nil || ev.Type != "a" {
		t.Fatalf("first: %+v %v", ev, err)
	}
	if _, err := s.Next(); !errors.Is(err, boom) {
		t.Fatalf("second: %v, want boom", err)
	}
}

func TestEventName(t *testing.T) {
	tests := []struct {
		ev   sseEvent
		want string
	}{
		{sseEvent{Type: "status_update_event", Data: "{}"}, "status_update_event"},
		{sseEvent{Type: "message", Data: `{"eventType":"api_post_event","x":1}`}, "api_post_event"},
		{sseEvent{Type: "message", Data: `not json`}, ""},
		{sseEvent{Type: "message", Data: `{"eventType":"api_post_event"`, Truncated: true}, ""},
	}
	for _, tc := range tests {
		if got := eventName(tc.ev); got != tc.want {
			t.Errorf("eventName(%+v) = %q, want %q", tc.ev, got, tc.want)
		}
	}
}

func BenchmarkSSE(b *testing.B) {
	data, err := os.ReadFile("testdata/events.txt")
	if err != nil {
		b.Fatal(err)
	}
	input := strings.Repeat(string(data), 100)
	b.SetBytes(int64(len(input)))
	for b.Loop() {
		s := newSSEReader(strings.NewReader(input))
		for {
			if _, err := s.Next(); err != nil {
				break
			}
		}
	}
}
