package vip

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestDomainFrag(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"myservice", "myservice"},
		{"/mygroup/myapp", "mygroupmyapp"},
		{"/api.hello-world", "api.hello-world"},
		{"My_Service", "my-service"},
		{"MyService", "myservice"},
		{"..a..b..", "a.b"},
		{"-lead", "lead"},
		{"_lead_", "lead"},
		{"trail--", "trail"},
		{"a b!c", "abc"},
		{"ünïcode", "ncode"},
		{"/", ""},
		{"---", ""},
		{"a.---.b", "a.b"},
		{strings.Repeat("x", 70), strings.Repeat("x", 63)},
		{strings.Repeat("x", 62) + "-y", strings.Repeat("x", 62)},
		{"/group/sub.app_name", "groupsub.app-name"},
	} {
		if got := DomainFrag(tc.in); got != tc.want {
			t.Errorf("DomainFrag(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestParseLabel(t *testing.T) {
	const domain = DefaultDomain
	for _, tc := range []struct {
		in      string
		name    string
		ip      string
		port    uint16
		wantErr string
	}{
		{in: "myservice:6666", name: "myservice.marathon.l4lb.thisdcos.directory", port: 6666},
		{in: "/myservice:6666", name: "myservice.marathon.l4lb.thisdcos.directory", port: 6666},
		{in: "/mygroup/myapp:80", name: "mygroupmyapp.marathon.l4lb.thisdcos.directory", port: 80},
		{in: "/api.hello-world:80", name: "api.hello-world.marathon.l4lb.thisdcos.directory", port: 80},
		{in: "My_Service:1", name: "my-service.marathon.l4lb.thisdcos.directory", port: 1},
		{in: " spaced:65535 ", name: "spaced.marathon.l4lb.thisdcos.directory", port: 65535},
		{in: "10.21.1.15:6666", ip: "10.21.1.15", port: 6666},
		{in: "198.18.255.7:53", ip: "198.18.255.7", port: 53},
		{in: "[fd01::1]:80", ip: "fd01::1", port: 80},
		{in: "fd01::1:80", ip: "fd01::1", port: 80},
		{in: "[::ffff:10.0.0.1]:80", ip: "10.0.0.1", port: 80},
		{in: "myservice", wantErr: "no port"},
		{in: "myservice:", wantErr: "not a number"},
		{in: "myservice:http", wantErr: "not a number"},
		{in: "myservice:0", wantErr: "out of range"},
		{in: "myservice:65536", wantErr: "out of range"},
		{in: "myservice:-1", wantErr: "not a number"},
		{in: ":80", wantErr: "empty name"},
		{in: "/:80", wantErr: "no usable characters"},
		{in: "[fe80::1%eth0]:80", wantErr: "not an IP address"},
		{in: "fe80::1%eth0:80", wantErr: "not an IP address"},
		{in: "[myservice]:80", wantErr: "not an IP address"},
		{in: "fd01::zz:80", wantErr: "not an IP address"},
	} {
		spec, err := ParseLabel(tc.in, FrameworkMarathon, domain)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseLabel(%q) error = %v, want one containing %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseLabel(%q): %v", tc.in, err)
			continue
		}
		var wantIP netip.Addr
		if tc.ip != "" {
			wantIP = netip.MustParseAddr(tc.ip)
		}
		if spec.Name != tc.name || spec.IP != wantIP || spec.Port != tc.port {
			t.Errorf("ParseLabel(%q) = %+v, want name %q ip %v port %d", tc.in, spec, tc.name, wantIP, tc.port)
		}
	}
}

func TestIsLabelKey(t *testing.T) {
	for key, want := range map[string]bool{
		"VIP_0": true, "vip_1": true, "Vip": true, "VIPX": true,
		"VI": false, "HAPROXY_0_VHOST": false, "_VIP_0": false, "": false,
	} {
		if got := IsLabelKey(key); got != want {
			t.Errorf("IsLabelKey(%q) = %v, want %v", key, got, want)
		}
	}
}

func TestProtocols(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    []Proto
		wantErr bool
	}{
		{"", []Proto{TCP}, false},
		{"tcp", []Proto{TCP}, false},
		{"udp", []Proto{UDP}, false},
		{"udp,tcp", []Proto{UDP, TCP}, false},
		{"tcp,udp", []Proto{TCP, UDP}, false},
		{"TCP", []Proto{TCP}, false},
		{"tcp, udp", []Proto{TCP, UDP}, false},
		{"tcp,tcp", []Proto{TCP}, false},
		{"sctp", nil, true},
		{"tcp,", nil, true},
	} {
		got, err := Protocols(tc.in)
		if (err != nil) != tc.wantErr || !slices.Equal(got, tc.want) {
			t.Errorf("Protocols(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}
