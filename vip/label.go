package vip

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// DefaultDomain is the zone under which named VIPs live.
const DefaultDomain = "l4lb.thisdcos.directory"

// FrameworkMarathon is the framework label of VIPs declared by Marathon apps.
const FrameworkMarathon = "marathon"

// maxLabel is the longest DNS label.
const maxLabel = 63

// Spec is what one VIP label declares: a named VIP (Name set) or an IP VIP
// (IP set), and a port.
type Spec struct {
	Name string // DNS name, without the trailing dot; empty for an IP VIP
	IP   netip.Addr
	Port uint16
}

// IsLabelKey reports whether a port label key declares a VIP: keys that start
// with "VIP" in any case, such as VIP_0.
func IsLabelKey(key string) bool {
	return len(key) >= 3 && strings.EqualFold(key[:3], "VIP")
}

// ParseLabel parses a VIP label value such as "myservice:6666",
// "/mygroup/myapp:80", "10.21.1.15:6666", "[fd01::1]:80" or "fd01::1:80".
// The value is split at its last colon. framework and domain build the name
// of a named VIP: <frag>.<framework>.<domain>.
func ParseLabel(value, framework, domain string) (Spec, error) {
	value = strings.TrimSpace(value)
	i := strings.LastIndexByte(value, ':')
	if i < 0 {
		return Spec{}, fmt.Errorf("value %q has no port: want NAME:PORT or IP:PORT", value)
	}
	host, portText := value[:i], value[i+1:]
	port, err := strconv.ParseUint(portText, 10, 32)
	if err != nil {
		return Spec{}, fmt.Errorf("value %q: port %q is not a number", value, portText)
	}
	if port < 1 || port > 65535 {
		return Spec{}, fmt.Errorf("value %q: port %d out of range 1..65535", value, port)
	}
	if host == "" {
		return Spec{}, fmt.Errorf("value %q has an empty name", value)
	}
	if ip, ok := parseIPHost(host); ok {
		return Spec{IP: ip, Port: uint16(port)}, nil
	}
	if strings.ContainsAny(host, ":[]%") {
		return Spec{}, fmt.Errorf("value %q: %q is not an IP address (zones are not allowed) nor a name", value, host)
	}
	frag := DomainFrag(host)
	if frag == "" {
		return Spec{}, fmt.Errorf("value %q: name %q has no usable characters", value, host)
	}
	return Spec{Name: frag + "." + framework + "." + domain, Port: uint16(port)}, nil
}

// parseIPHost recognises an IPv4 or IPv6 literal, the latter optionally in
// brackets. Zones are not accepted.
func parseIPHost(host string) (netip.Addr, bool) {
	if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		host = host[1 : len(host)-1]
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || ip.Zone() != "" {
		return netip.Addr{}, false
	}
	return ip.Unmap(), true
}

// DomainFrag turns the host part of a named VIP label into DNS labels the way
// dcos-net does: split on dots, dropping empty pieces; in each piece
// lower-case letters, drop characters outside [a-z0-9_-], turn _ into -,
// strip leading characters up to the first [a-z0-9] and trailing dashes, cap
// at 63 characters. Pieces left empty are dropped. "/mygroup/myapp" gives
// "mygroupmyapp" and "My_Service" gives "my-service".
func DomainFrag(host string) string {
	var out []string
	for _, piece := range strings.Split(host, ".") {
		if l := fragLabel(piece); l != "" {
			out = append(out, l)
		}
	}
	return strings.Join(out, ".")
}

func fragLabel(piece string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(piece) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-':
			b.WriteRune(r)
		case r == '_':
			b.WriteByte('-')
		}
	}
	s := strings.TrimLeftFunc(b.String(), func(r rune) bool { return r == '-' })
	s = strings.TrimRight(s, "-")
	if len(s) > maxLabel {
		s = strings.TrimRight(s[:maxLabel], "-")
	}
	return s
}

// Protocols parses a port's protocol field: "tcp", "udp", "udp,tcp" or
// "tcp,udp"; empty means tcp.
func Protocols(field string) ([]Proto, error) {
	field = strings.TrimSpace(strings.ToLower(field))
	if field == "" {
		return []Proto{TCP}, nil
	}
	var out []Proto
	seen := map[Proto]bool{}
	for _, p := range strings.Split(field, ",") {
		var proto Proto
		switch strings.TrimSpace(p) {
		case "tcp":
			proto = TCP
		case "udp":
			proto = UDP
		default:
			return nil, fmt.Errorf("unknown protocol %q in %q: want tcp, udp or udp,tcp", strings.TrimSpace(p), field)
		}
		if !seen[proto] {
			seen[proto] = true
			out = append(out, proto)
		}
	}
	return out, nil
}
