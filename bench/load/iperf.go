package load

import (
	"encoding/json"
	"errors"
	"fmt"
)

// IperfResult is the part of iperf3's -J output the benchmark reads.
type IperfResult struct {
	Error string `json:"error"`
	End   struct {
		SumSent struct {
			BitsPerSecond float64 `json:"bits_per_second"`
			Retransmits   int     `json:"retransmits"`
		} `json:"sum_sent"`
		SumReceived struct {
			BitsPerSecond float64 `json:"bits_per_second"`
			Seconds       float64 `json:"seconds"`
		} `json:"sum_received"`
	} `json:"end"`
}

// ParseIperf reads iperf3's JSON report and returns the received
// throughput in bits per second.
func ParseIperf(data []byte) (IperfResult, float64, error) {
	var r IperfResult
	if err := json.Unmarshal(data, &r); err != nil {
		return r, 0, fmt.Errorf("decode iperf3 json: %w", err)
	}
	if r.Error != "" {
		return r, 0, fmt.Errorf("iperf3: %s", r.Error)
	}
	bps := r.End.SumReceived.BitsPerSecond
	if bps <= 0 {
		return r, 0, errors.New("iperf3 json has no received throughput")
	}
	return r, bps, nil
}
