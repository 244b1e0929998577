package layout

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"

	"github.com/l4lb/l4lb/bench/scenario"
	"github.com/l4lb/l4lb/vip"
)

// Kube describes the cluster the kube-proxy-shaped rulesets are generated
// for. Services are the VIPs of a scenario, all in one Kubernetes
// namespace; each VIP port is a service port named "p<port>".
type Kube struct {
	Namespace   string       // Kubernetes namespace of every service
	PodCIDR     netip.Prefix // traffic from outside it is marked for masquerade
	ServiceCIDR netip.Prefix // cluster IPs: here the VIP pool
	NodeIP      netip.Addr   // the node's address (nodeport-ips)
}

// kubeService is one IPv4 service port with its endpoints, as both kube
// layouts need it.
type kubeService struct {
	ip        netip.Addr
	port      uint16
	proto     string // tcp or udp
	portName  string // ns/svc:pPORT, kube-proxy's ServicePortName string
	chainBase string // ns/svc/proto/pPORT, the nftables chain name base
	endpoints []netip.AddrPort
}

func (k Kube) services(vips []vip.VIP) []kubeService {
	out := make([]kubeService, 0, len(vips))
	for _, v := range vips {
		if !v.Addr.Is4() {
			continue // IPv6 services live in kube-proxy's ip6 table: not generated
		}
		name := scenario.ShortName(v)
		if name == "" {
			name = "ip-" + strings.ReplaceAll(v.Addr.String(), ".", "-")
		}
		p := "p" + strconv.Itoa(int(v.Port))
		s := kubeService{
			ip: v.Addr, port: v.Port, proto: v.Proto.String(),
			portName:  k.Namespace + "/" + name + ":" + p,
			chainBase: k.Namespace + "/" + name + "/" + v.Proto.String() + "/" + p,
		}
		for _, b := range v.Active() {
			s.endpoints = append(s.endpoints, b.AddrPort())
		}
		out = append(out, s)
	}
	return out
}

// nftHash is the readable-name-with-hash form of kube-proxy's nftables
// chains: 8 base32 characters of the name's SHA-256, a dash, the name.
func nftHash(name string) string {
	sum := sha256.Sum256([]byte(name))
	return base32.StdEncoding.EncodeToString(sum[:])[:8] + "-" + name
}

// iptHash is the 16-character base32 SHA-256 prefix of kube-proxy's
// iptables chain names (KUBE-SVC-..., KUBE-SEP-...).
func iptHash(name string) string {
	sum := sha256.Sum256([]byte(name))
	return base32.StdEncoding.EncodeToString(sum[:])[:16]
}

// KubeNFTTable is the table of the kube-proxy nftables layout.
const KubeNFTTable = "kube-proxy"

// WriteKubeNFT writes the ruleset kube-proxy's nftables mode programs for
// ClusterIP services, in the `nft -f` command form its transactions take:
// the static table (sets, verdict maps, hooked chains), then for each
// service a chain "service-HASH-ns/svc/proto/port" that marks traffic from
// outside the pod network for masquerade and picks an endpoint with
// `numgen random mod N vmap { ... }`, one chain per endpoint that DNATs,
// and the service's element in the service-ips verdict map.
func (k Kube) WriteKubeNFT(w io.Writer, vips []vip.VIP) error {
	ew := &errWriter{w: w}
	t := "ip " + KubeNFTTable
	ew.printf("add table %s { comment \"rules for kube-proxy\" ; }\n", t)
	for _, s := range []string{
		"add set %s cluster-ips { type ipv4_addr ; comment \"Active ClusterIPs\" ; }",
		"add set %s nodeport-ips { type ipv4_addr ; comment \"IPs that accept NodePort traffic\" ; }",
		"add map %s firewall-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment \"destinations that are subject to LoadBalancerSourceRanges\" ; }",
		"add map %s no-endpoint-nodeports { type inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to service nodeports with no endpoints\" ; }",
		"add map %s no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to services with no endpoints\" ; }",
		"add map %s service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }",
		"add map %s service-nodeports { type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }",
		"add chain %s cluster-ips-check",
		"add chain %s filter-prerouting-pre-dnat { type filter hook prerouting priority -110 ; }",
		"add chain %s filter-output-pre-dnat { type filter hook output priority -110 ; }",
		"add chain %s filter-forward { type filter hook forward priority 0 ; }",
		"add chain %s filter-input { type filter hook input priority 0 ; }",
		"add chain %s filter-output { type filter hook output priority 0 ; }",
		"add chain %s firewall-check",
		"add chain %s mark-for-masquerade",
		"add chain %s masquerading",
		"add chain %s nat-output { type nat hook output priority -100 ; }",
		"add chain %s nat-postrouting { type nat hook postrouting priority 100 ; }",
		"add chain %s nat-prerouting { type nat hook prerouting priority -100 ; }",
		"add chain %s nodeport-endpoints-check",
		"add chain %s reject-chain { comment \"helper for @no-endpoint-services / @no-endpoint-nodeports\" ; }",
		"add chain %s services",
		"add chain %s service-endpoints-check",
		"add rule %s cluster-ips-check ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\"",
	} {
		ew.printf(s+"\n", t)
	}
	ew.printf("add rule %s cluster-ips-check ip daddr { %s } drop comment \"Drop traffic to unallocated ClusterIPs\"\n", t, k.ServiceCIDR)
	for _, s := range []string{
		"add rule %s filter-prerouting-pre-dnat ct state new jump firewall-check",
		"add rule %s filter-forward ct state new jump service-endpoints-check",
		"add rule %s filter-forward ct state new jump cluster-ips-check",
		"add rule %s filter-input ct state new jump nodeport-endpoints-check",
		"add rule %s filter-input ct state new jump service-endpoints-check",
		"add rule %s filter-output ct state new jump service-endpoints-check",
		"add rule %s filter-output-pre-dnat ct state new jump firewall-check",
		"add rule %s filter-output ct state new jump cluster-ips-check",
		"add rule %s firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips",
		"add rule %s mark-for-masquerade mark set mark or 0x4000",
		"add rule %s masquerading mark and 0x4000 == 0 return",
		"add rule %s masquerading mark set mark xor 0x4000",
		"add rule %s masquerading masquerade fully-random",
		"add rule %s nat-output jump services",
		"add rule %s nat-postrouting jump masquerading",
		"add rule %s nat-prerouting jump services",
		"add rule %s nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports",
		"add rule %s reject-chain reject",
		"add rule %s services ip daddr . meta l4proto . th dport vmap @service-ips",
		"add rule %s services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports",
		"add rule %s service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services",
	} {
		ew.printf(s+"\n", t)
	}
	ew.printf("add element %s nodeport-ips { %s }\n", t, k.NodeIP)
	for _, s := range k.services(vips) {
		k.writeNFTService(ew, t, s)
	}
	return ew.err
}

func (k Kube) nftServiceChain(s kubeService) string { return "service-" + nftHash(s.chainBase) }

func (k Kube) nftEndpointChain(s kubeService, ep netip.AddrPort) string {
	return "endpoint-" + nftHash(s.chainBase+"__"+ep.Addr().String()+"/"+strconv.Itoa(int(ep.Port())))
}

// writeNFTService writes one service: its chains, their rules and its map
// elements. A service without endpoints only gets its no-endpoint element.
func (k Kube) writeNFTService(ew *errWriter, t string, s kubeService) {
	key := fmt.Sprintf("%s . %s . %d", s.ip, s.proto, s.port)
	if len(s.endpoints) == 0 {
		ew.printf("add element %s cluster-ips { %s }\n", t, s.ip)
		ew.printf("add element %s no-endpoint-services { %s comment %q : goto reject-chain }\n", t, key, s.portName)
		return
	}
	k.writeNFTServiceChains(ew, t, s, false)
	ew.printf("add element %s cluster-ips { %s }\n", t, s.ip)
	ew.printf("add element %s service-ips { %s : goto %s }\n", t, key, k.nftServiceChain(s))
}

// writeNFTServiceChains writes the service chain and its endpoint chains;
// with flush (a partial sync of a changed service) each chain is flushed
// before its rules are written again, as kube-proxy's partial syncs do.
func (k Kube) writeNFTServiceChains(ew *errWriter, t string, s kubeService, flush bool) {
	svc := k.nftServiceChain(s)
	chains := []string{svc}
	for _, ep := range s.endpoints {
		chains = append(chains, k.nftEndpointChain(s, ep))
	}
	// Every chain exists before a rule refers to it.
	for _, c := range chains {
		ew.printf("add chain %s %s\n", t, c)
		if flush {
			ew.printf("flush chain %s %s\n", t, c)
		}
	}
	ew.printf("add rule %s %s ip daddr %s ip saddr != %s jump mark-for-masquerade\n", t, svc, s.ip, k.PodCIDR)
	ew.printf("add rule %s %s numgen random mod %d vmap { ", t, svc, len(s.endpoints))
	for i, c := range chains[1:] {
		sep := " , "
		if i == len(s.endpoints)-1 {
			sep = " "
		}
		ew.printf("%d : goto %s%s", i, c, sep)
	}
	ew.printf("}\n")
	for i, ep := range s.endpoints {
		c := chains[i+1]
		ew.printf("add rule %s %s ip saddr %s jump mark-for-masquerade\n", t, c, ep.Addr())
		ew.printf("add rule %s %s meta l4proto %s dnat to %s\n", t, c, s.proto, ep)
	}
}

// WriteKubeNFTUpdate writes the transaction kube-proxy's nftables mode
// sends when the endpoints of one service change: the service's chain and
// its endpoint chains are (re)created and flushed, their rules written
// again; chains of endpoints that are gone are deleted.
func (k Kube) WriteKubeNFTUpdate(w io.Writer, old, updated vip.VIP) error {
	ew := &errWriter{w: w}
	t := "ip " + KubeNFTTable
	olds := k.services([]vip.VIP{old})
	news := k.services([]vip.VIP{updated})
	if len(olds) != 1 || len(news) != 1 {
		return fmt.Errorf("kube nftables update: %s is not an IPv4 VIP", updated)
	}
	k.writeNFTServiceChains(ew, t, news[0], true)
	keep := map[netip.AddrPort]bool{}
	for _, ep := range news[0].endpoints {
		keep[ep] = true
	}
	for _, ep := range olds[0].endpoints {
		if !keep[ep] {
			ew.printf("delete chain %s %s\n", t, k.nftEndpointChain(olds[0], ep))
		}
	}
	return ew.err
}

// largeClusterEndpoints is the endpoint count above which kube-proxy's
// iptables mode leaves out the comments of per-endpoint rules.
const largeClusterEndpoints = 1000

func (k Kube) iptSvcChain(s kubeService) string { return "KUBE-SVC-" + iptHash(s.portName+s.proto) }

func (k Kube) iptSepChain(s kubeService, ep netip.AddrPort) string {
	return "KUBE-SEP-" + iptHash(s.portName+s.proto+ep.String())
}

// WriteKubeIPTables writes the iptables-restore input of kube-proxy's
// iptables mode for ClusterIP services: the filter and nat tables with the
// jumps from the built-in chains, KUBE-SERVICES with one rule per service
// in the order given (kube-proxy's is that of a Go map), a KUBE-SVC-HASH
// chain per service that picks an endpoint with `-m statistic --mode
// random --probability 1/n` rules, and a KUBE-SEP-HASH chain per endpoint
// that DNATs. Above 1000 endpoints the per-endpoint rules lose their
// comments, as kube-proxy's large-cluster mode does.
func (k Kube) WriteKubeIPTables(w io.Writer, vips []vip.VIP) error {
	ew := &errWriter{w: w}
	svcs := k.services(vips)
	endpoints := 0
	for _, s := range svcs {
		endpoints += len(s.endpoints)
	}
	large := endpoints > largeClusterEndpoints

	ew.printf("*filter\n")
	for _, c := range []string{":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
		":KUBE-NODEPORTS - [0:0]", ":KUBE-SERVICES - [0:0]", ":KUBE-EXTERNAL-SERVICES - [0:0]",
		":KUBE-FIREWALL - [0:0]", ":KUBE-FORWARD - [0:0]", ":KUBE-PROXY-FIREWALL - [0:0]"} {
		ew.printf("%s\n", c)
	}
	for _, r := range []string{
		`-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL`,
		`-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS`,
		`-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES`,
		`-A INPUT -j KUBE-FIREWALL`,
		`-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL`,
		`-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD`,
		`-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`,
		`-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES`,
		`-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL`,
		`-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`,
		`-A OUTPUT -j KUBE-FIREWALL`,
		`-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP`,
		`-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP`,
		`-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT`,
		`-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`,
	} {
		ew.printf("%s\n", r)
	}
	for _, s := range svcs {
		if len(s.endpoints) == 0 {
			ew.printf("-A KUBE-SERVICES -m comment --comment \"%s has no endpoints\" -m %s -p %s -d %s --dport %d -j REJECT\n",
				s.portName, s.proto, s.proto, s.ip, s.port)
		}
	}
	ew.printf("COMMIT\n*nat\n")
	for _, c := range []string{":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]", ":POSTROUTING ACCEPT [0:0]",
		":KUBE-SERVICES - [0:0]", ":KUBE-NODEPORTS - [0:0]", ":KUBE-POSTROUTING - [0:0]", ":KUBE-MARK-MASQ - [0:0]"} {
		ew.printf("%s\n", c)
	}
	for _, s := range svcs {
		if len(s.endpoints) == 0 {
			continue
		}
		ew.printf(":%s - [0:0]\n", k.iptSvcChain(s))
		for _, ep := range s.endpoints {
			ew.printf(":%s - [0:0]\n", k.iptSepChain(s, ep))
		}
	}
	for _, r := range []string{
		`-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`,
		`-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`,
		`-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING`,
		`-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN`,
		`-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000`,
		`-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully`,
		`-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000`,
	} {
		ew.printf("%s\n", r)
	}
	for _, s := range svcs {
		if len(s.endpoints) == 0 {
			continue
		}
		k.writeIPTService(ew, s, large)
	}
	ew.printf("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n")
	ew.printf("COMMIT\n")
	return ew.err
}

func (k Kube) writeIPTService(ew *errWriter, s kubeService, large bool) {
	svc := k.iptSvcChain(s)
	ew.printf("-A KUBE-SERVICES -m comment --comment \"%s cluster IP\" -m %s -p %s -d %s --dport %d -j %s\n",
		s.portName, s.proto, s.proto, s.ip, s.port, svc)
	ew.printf("-A %s -m comment --comment \"%s cluster IP\" -m %s -p %s -d %s --dport %d ! -s %s -j KUBE-MARK-MASQ\n",
		svc, s.portName, s.proto, s.proto, s.ip, s.port, k.PodCIDR)
	n := len(s.endpoints)
	for i, ep := range s.endpoints {
		comment := ""
		if !large {
			comment = fmt.Sprintf(" -m comment --comment \"%s -> %s\"", s.portName, ep)
		}
		prob := ""
		if i < n-1 {
			prob = fmt.Sprintf(" -m statistic --mode random --probability %0.10f", 1.0/float64(n-i))
		}
		ew.printf("-A %s%s%s -j %s\n", svc, comment, prob, k.iptSepChain(s, ep))
	}
	for _, ep := range s.endpoints {
		sep := k.iptSepChain(s, ep)
		comment := ""
		if !large {
			comment = " -m comment --comment " + s.portName
		}
		ew.printf("-A %s%s -s %s -j KUBE-MARK-MASQ\n", sep, comment, ep.Addr())
		ew.printf("-A %s%s -m %s -p %s -j DNAT --to-destination %s\n", sep, comment, s.proto, s.proto, ep)
	}
}

// errWriter keeps the first write error, so that generators can print
// freely and report once.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) printf(format string, args ...any) {
	if e.err != nil {
		return
	}
	_, e.err = fmt.Fprintf(e.w, format, args...)
}
