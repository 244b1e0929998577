package etcdtest_test

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/l4lb/l4lb/cluster"
	"github.com/l4lb/l4lb/internal/etcdtest"
)

// The Go client talks to Debian's etcd server: put, get, transaction,
// watch, lease and election, all used by cluster mode.
func TestServerWithClient(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.Options{})
	cli, err := cluster.NewClient(cluster.ClientConfig{Endpoints: []string{srv.Endpoint()}, Dial: srv.Dial})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	w := cli.Watch(ctx, "/t/", clientv3.WithPrefix())
	put, err := cli.Put(ctx, "/t/a", "1")
	if err != nil {
		t.Fatalf("put: %v", err)
	}
	resp, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision("/t/a"), "=", put.Header.Revision)).
		Then(clientv3.OpPut("/t/b", "2")).Commit()
	if err != nil || !resp.Succeeded {
		t.Fatalf("txn: %v %v", resp, err)
	}
	got, err := cli.Get(ctx, "/t/", clientv3.WithPrefix())
	if err != nil || len(got.Kvs) != 2 {
		t.Fatalf("get: %v %v", got, err)
	}
	var events int
	for events < 2 {
		wr := <-w
		if err := wr.Err(); err != nil {
			t.Fatalf("watch: %v", err)
		}
		events += len(wr.Events)
	}

	s, err := concurrency.NewSession(cli, concurrency.WithTTL(2))
	if err != nil {
		t.Fatalf("session: %v", err)
	}
	e := concurrency.NewElection(s, "/t/leader")
	if err := e.Campaign(ctx, "me"); err != nil {
		t.Fatalf("campaign: %v", err)
	}
	l, err := e.Leader(ctx)
	if err != nil || string(l.Kvs[0].Value) != "me" {
		t.Fatalf("leader: %v %v", l, err)
	}
	s.Close()

	// A restart keeps the data.
	srv.Stop()
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	got, err = cli.Get(ctx, "/t/a")
	if err != nil || len(got.Kvs) != 1 {
		t.Fatalf("get after restart: %v %v", got, err)
	}
}
