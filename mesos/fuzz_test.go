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
	"github.com/l4lb/l4lb/vip"
)

// FuzzStream feeds arbitrary bytes as an operator API stream, read in
// pieces of a fuzzed size, through the RecordIO reader, the event decoder
// and the model: no panic, errors only of the documented kinds, and every
// declaration that comes out is well formed (a port in range, a name under
// the zone or an IP, backends with valid addresses and ports).
// The seed corpus is below and in testdata/fuzz/FuzzStream.
func FuzzStream(f *testing.F) {
	state, err := os.ReadFile("../examples/mesos-state.json")
	if err != nil {
		f.Fatal(err)
	}
	sub := bytes.Replace(state, []byte(`"type": "GET_STATE",`), []byte(`"type": "SUBSCRIBED", "subscribed": {"heartbeat_interval_seconds": 15,`), 1)
	sub = bytes.Replace(sub, []byte(`"get_state": {`), []byte(`"get_state": {`), 1)
	sub = append(bytes.TrimSpace(sub), '}')
	var seed []byte
	seed = mesos.AppendRecord(seed, sub)
	for _, ev := range []string{
		`{"type":"HEARTBEAT"}`,
		`{"type":"TASK_ADDED","task_added":{"task":{"name":"b2","task_id":{"value":"b2"},"framework_id":{"value":"b7c9a3e2-5d1f-4c8a-9e2b-000000000001-0002"},"agent_id":{"value":"b7c9a3e2-5d1f-4c8a-9e2b-000000000001-S2"},"state":"TASK_STAGING","discovery":{"ports":{"ports":[{"number":9092,"protocol":"tcp","labels":{"labels":[{"key":"VIP_1","value":"broker:9092"}]}}]}}}}}`,
		`{"type":"TASK_UPDATED","task_updated":{"framework_id":{"value":"b7c9a3e2-5d1f-4c8a-9e2b-000000000001-0002"},"state":"TASK_RUNNING","status":{"task_id":{"value":"b2"},"state":"TASK_RUNNING","timestamp":5,"healthy":false,"container_status":{"network_infos":[{"ip_addresses":[{"ip_address":"fd00:198:19::5"}]}]}}}}`,
		`{"type":"TASK_UPDATED","task_updated":{"framework_id":{"value":"b7c9a3e2-5d1f-4c8a-9e2b-000000000001-0002"},"state":"TASK_KILLING","status":{"task_id":{"value":"kafka-0-broker__8c3a5e1f-2b4d-4f6a-9c8e-7d1b2a3c4e5f"},"state":"TASK_KILLING","timestamp":9e9}}}`,
		`{"type":"FRAMEWORK_UPDATED","framework_updated":{"framework":{"framework_info":{"id":{"value":"b7c9a3e2-5d1f-4c8a-9e2b-000000000001-0002"},"name":"/prod/Kafka_2"}}}}`,
		`{"type":"AGENT_ADDED","agent_added":{"agent":{"agent_info":{"id":{"value":"b7c9a3e2-5d1f-4c8a-9e2b-000000000001-S2"},"hostname":"agent-2.example"}}}}`,
		`{"type":"AGENT_REMOVED","agent_removed":{"agent_id":{"value":"b7c9a3e2-5d1f-4c8a-9e2b-000000000001-S1"}}}`,
		`{"type":"FRAMEWORK_REMOVED","framework_removed":{"framework_info":{"id":{"value":"b7c9a3e2-5d1f-4c8a-9e2b-000000000001-0000"}}}}`,
	} {
		seed = mesos.AppendRecord(seed, []byte(ev))
	}
	f.Add(seed, uint8(7))
	f.Add(seed, uint8(0))
	f.Add([]byte("20\n{\"type\":\"HEARTBEAT\"}3\nabc"), uint8(1))
	f.Add([]byte("99999999999\n"), uint8(3))
	f.Add(mesos.AppendRecord(nil, []byte(`{"type":"TASK_ADDED","task_added":{"task":{"task_id":{"value":"x"},"labels":{"labels":[{"key":"VIP_PORT0","value":"udp://[fd00:198:18::1]:53"}]},"resources":[{"name":"ports","ranges":{"range":[{"begin":1,"end":18446744073709551615}]}}]}}}`)), uint8(2))

	f.Fuzz(func(t *testing.T, data []byte, piece uint8) {
		var r io.Reader = bytes.NewReader(data)
		if piece > 0 {
			r = &pieces{r: r, n: int(piece)}
		}
		r = iotest.DataErrReader(r)
		rr := mesos.NewRecordReader(r, 1<<20)
		m := mesos.NewModel()
		for i := 0; i < 1000; i++ {
			rec, err := rr.Next()
			if err != nil {
				if err != io.EOF && !errors.Is(err, mesos.ErrFraming) && err != io.ErrUnexpectedEOF {
					t.Fatalf("reader error of an unknown kind: %v", err)
				}
				break
			}
			ev, _, err := mesos.DecodeEvent(rec)
			if err != nil {
				if !errors.Is(err, mesos.ErrDecode) {
					t.Fatalf("decode error of an unknown kind: %v", err)
				}
				break
			}
			m.Apply(ev, t0)
		}
		decls, _ := m.AllDeclarations(vip.Config{})
		for _, d := range decls {
			if d.Spec.Port == 0 || (d.Spec.Name == "") == !d.Spec.IP.IsValid() {
				t.Fatalf("bad declaration %+v", d)
			}
			if d.Spec.Name != "" && !strings.HasSuffix(d.Spec.Name, "."+vip.DefaultDomain) {
				t.Fatalf("name %q outside the zone", d.Spec.Name)
			}
			if d.Proto != vip.TCP && d.Proto != vip.UDP {
				t.Fatalf("protocol %v", d.Proto)
			}
			for _, b := range d.Backends {
				if !b.Addr.IsValid() || b.Port == 0 {
					t.Fatalf("bad backend %+v", b)
				}
			}
		}
	})
}

// pieces returns at most n bytes per read.
type pieces struct {
	r io.Reader
	n int
}

func (p *pieces) Read(b []byte) (int, error) {
	if len(b) > p.n {
		b = b[:p.n]
	}
	return p.r.Read(b)
}
