package mesos_test

import (
	"bytes"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/l4lb/l4lb/mesos"
)

func TestRecordReaderCutAnywhere(t *testing.T) {
	recs := []string{`{"type":"HEARTBEAT"}`, `{"type":"TASK_ADDED","task_added":{"task":{"task_id":{"value":"t"}}}}`, ``, `{}`}
	var stream []byte
	for _, r := range recs {
		stream = mesos.AppendRecord(stream, []byte(r))
	}
	if !bytes.HasPrefix(stream, []byte("20\n{\"type\":\"HEARTBEAT\"}")) {
		t.Fatalf("framing: %q", stream)
	}
	// One byte per read: every record is cut at every position.
	for name, r := range map[string]io.Reader{
		"whole":   bytes.NewReader(stream),
		"onebyte": iotest.OneByteReader(bytes.NewReader(stream)),
		"half":    iotest.HalfReader(bytes.NewReader(stream)),
	} {
		rr := mesos.NewRecordReader(r, 0)
		for i, want := range recs {
			got, err := rr.Next()
			if err != nil || string(got) != want {
				t.Fatalf("%s: record %d = %q, %v; want %q", name, i, got, err, want)
			}
		}
		if _, err := rr.Next(); err != io.EOF {
			t.Errorf("%s: end of stream: %v, want io.EOF", name, err)
		}
	}
}

func TestRecordReaderErrors(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want error
	}{
		{"abc\n{}", mesos.ErrFraming},
		{"\n{}", mesos.ErrFraming},
		{"-1\n", mesos.ErrFraming},
		{"12345678901\n", mesos.ErrFraming},
		{"2 \n{}", mesos.ErrFraming},
		{"101\n" + strings.Repeat("x", 101), mesos.ErrFraming}, // over the limit of 100
		{"10\n{}", io.ErrUnexpectedEOF},
		{"10", io.ErrUnexpectedEOF},
	} {
		rr := mesos.NewRecordReader(strings.NewReader(tc.in), 100)
		if _, err := rr.Next(); !errors.Is(err, tc.want) {
			t.Errorf("%q: %v, want %v", tc.in, err, tc.want)
		}
	}
}

func TestDecodeEvent(t *testing.T) {
	for _, bad := range []string{`garbage`, `{"type": `, `[]`, `{}`, `"HEARTBEAT"`} {
		if _, _, err := mesos.DecodeEvent([]byte(bad)); !errors.Is(err, mesos.ErrDecode) {
			t.Errorf("%s: %v, want ErrDecode", bad, err)
		}
	}
	// A task of the wrong shape inside a well-formed SUBSCRIBED: that task
	// is a problem naming it, the others are kept.
	ev, problems, err := mesos.DecodeEvent([]byte(`{"type":"SUBSCRIBED","subscribed":{"heartbeat_interval_seconds":15,"get_state":{
	  "get_tasks":{"tasks":[{"task_id":{"value":"good"},"framework_id":{"value":"f"},"state":"TASK_RUNNING"},
	                        {"task_id":{"value":"bad"},"framework_id":{"value":"f"},"state":"TASK_RUNNING","discovery":{"ports":{"ports":[{"number":-1}]}}}]},
	  "get_frameworks":{"frameworks":[{"framework_info":{"id":{"value":"f"},"name":"kafka"}}]}}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if ev.Subscribed == nil || ev.Subscribed.GetState == nil || len(ev.Subscribed.GetState.GetTasks.Tasks) != 1 ||
		ev.Subscribed.GetState.GetTasks.Tasks[0].TaskID.Value != "good" || *ev.Subscribed.HeartbeatIntervalSeconds != 15 {
		t.Errorf("event %+v", ev)
	}
	if len(problems) != 1 || problems[0].Task != "bad" || problems[0].Framework != "f" {
		t.Errorf("problems %+v", problems)
	}
	// The same in TASK_ADDED.
	ev, problems, err = mesos.DecodeEvent([]byte(`{"type":"TASK_ADDED","task_added":{"task":{"task_id":{"value":"bad"},"framework_id":{"value":"f"},"state":7}}}`))
	if err != nil || ev.Type != mesos.EventTaskAdded || ev.TaskAdded != nil || len(problems) != 1 || problems[0].Task != "bad" {
		t.Errorf("TASK_ADDED: %+v %+v %v", ev, problems, err)
	}
	// Unknown events and fields are ignored.
	ev, problems, err = mesos.DecodeEvent([]byte(`{"type":"TASK_LAUNCHED_SOMEWHERE","extra":{"x":1}}`))
	if err != nil || len(problems) != 0 || ev.Type != "TASK_LAUNCHED_SOMEWHERE" {
		t.Errorf("unknown event: %+v %v %v", ev, problems, err)
	}
}

func TestDecodeStateShapes(t *testing.T) {
	data, err := os.ReadFile("../examples/mesos-state.json")
	if err != nil {
		t.Fatal(err)
	}
	gs, _, ok, err := mesos.DecodeState(data)
	if !ok || err != nil || len(gs.GetTasks.Tasks) != 3 {
		t.Fatalf("GET_STATE: ok=%v err=%v", ok, err)
	}
	sub := []byte(`{"type":"SUBSCRIBED","subscribed":{"get_state":` + string(bytes.TrimSpace(data[bytes.Index(data, []byte(`"get_state"`))+len(`"get_state":`):bytes.LastIndexByte(data[:len(bytes.TrimSpace(data))-1], '}')+1])) + `}}`)
	if gs, _, ok, err := mesos.DecodeState(sub); !ok || err != nil || len(gs.GetTasks.Tasks) != 3 {
		t.Errorf("SUBSCRIBED: ok=%v err=%v", ok, err)
	}
	for _, other := range []string{`{"apps": []}`, `{"id": "/x"}`, `[]`, `{"type":"GET_HEALTH"}`} {
		if _, _, ok, _ := mesos.DecodeState([]byte(other)); ok {
			t.Errorf("%s taken for a Mesos state", other)
		}
	}
}
