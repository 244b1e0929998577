package dns

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/l4lb/l4lb/internal/netns"
	"github.com/l4lb/l4lb/nat"
	"github.com/l4lb/l4lb/vip"
)

// loadDataPlane programs the ruleset of state into the namespace with the
// nat package's kernel adapter, routes of the VIP pools via lo included, as
// `l4lb run` does.
func loadDataPlane(t *testing.T, ns *netns.NS, state vip.State) {
	t.Helper()
	f, err := ns.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	k, err := nat.New(nat.DefaultTable, nat.WithNetNS(int(f.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	if _, err := k.Apply(context.Background(), nat.Compile(state, ""), false); err != nil {
		t.Fatalf("program the ruleset: %v", err)
	}
}

// resolvConf points the namespace's resolver at nameserver: `ip netns exec`
// bind-mounts /etc/netns/NAME/resolv.conf over /etc/resolv.conf. The file
// and its directory go when the test ends.
func resolvConf(t *testing.T, ns *netns.NS, nameserver string) {
	t.Helper()
	const root = "/etc/netns"
	_, err := os.Stat(root)
	createdRoot := errors.Is(err, fs.ErrNotExist)
	dir := filepath.Join(root, ns.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		if createdRoot {
			_ = os.Remove(root) // only when empty: another test may use it
		}
	})
	conf := fmt.Sprintf("nameserver %s\noptions timeout:1 attempts:2\n", nameserver)
	if err := os.WriteFile(filepath.Join(dir, "resolv.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
}

// serveHTTP runs an HTTP server inside the namespace that answers with
// body, until the test ends.
func serveHTTP(t *testing.T, ns *netns.NS, addr, body string) {
	t.Helper()
	var ln net.Listener
	if err := ns.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		t.Fatalf("listen on %s in %s: %v", addr, ns.Name, err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, body)
	})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
}

// TestCurlVIPName is the DC/OS documentation's check: from an agent whose
// resolver is l4lb, `curl http://myservice.marathon.l4lb.thisdcos.directory:6666/`
// reaches a task of the app, through the name and the VIP's rules.
func TestCurlVIPName(t *testing.T) {
	topo := netns.TopologyForTest(t, "l4dnsc", 1, 0, "curl", "nft")
	agent, be := topo.Agent, topo.Backends[0]
	serveHTTP(t, be.NS, be.Addr4.String()+":8080", "hello from "+be.Name)
	state := desired(t, []byte(fmt.Sprintf(`{"id": "/myservice", "portDefinitions": [
	    {"port": 6666, "protocol": "tcp", "labels": {"VIP_0": "myservice:6666"}}],
	  "tasks": [{"id": "myservice.1", "host": %q, "ports": [8080], "state": "TASK_RUNNING"}]}`, be.Addr4)))
	loadDataPlane(t, agent.NS, state)

	srv, err := New(Config{Listen: []string{"127.0.0.1:53"}})
	if err != nil {
		t.Fatal(err)
	}
	startServer(t, agent.NS, srv)
	resolvConf(t, agent.NS, "127.0.0.1")
	const url = "http://myservice.marathon.l4lb.thisdcos.directory:6666/"
	curl := func() (string, error) {
		return agent.Run("curl", "-sS", "--max-time", "10", url)
	}

	// Not published yet: the name does not resolve.
	if out, err := curl(); err == nil || !strings.Contains(err.Error(), "Could not resolve host") {
		t.Fatalf("before publishing: %q, %v; want a resolver failure", out, err)
	}
	srv.Publish(Records(state, ""))
	out, err := curl()
	if err != nil {
		t.Fatalf("curl %s: %v", url, err)
	}
	if got := strings.TrimSpace(out); got != "hello from "+be.Name {
		t.Errorf("curl %s: %q", url, got)
	}
	// The system resolver sees the VIP's address.
	hosts, err := agent.Run("getent", "hosts", "myservice.marathon.l4lb.thisdcos.directory")
	if want := addrOf(t, state, nameMyservice, false).String(); err != nil || !strings.HasPrefix(hosts, want+" ") {
		t.Errorf("getent hosts: %q, %v; want %s", hosts, err, want)
	}
}
