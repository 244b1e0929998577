package cluster_test

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/l4lb/l4lb/internal/etcdtest"
)

// One transaction that puts some keys and deletes others reaches the
// agent as one delta with both.
func TestSourceTxnPutsAndDeletes(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.Options{})
	cli := client(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	k1, v1 := vipValue("198.18.0.1", 80, "198.19.0.11")
	k2, v2 := vipValue("198.18.0.2", 80, "198.19.0.11")
	k3, v3 := vipValue("198.18.0.3", 80, "198.19.0.11")
	for _, kv := range [][2]string{{k1, v1}, {k2, v2}, {k3, v3}} {
		if _, err := cli.Put(ctx, kv[0], kv[1]); err != nil {
			t.Fatal(err)
		}
	}
	a := startAgent(t, srv, 0)
	waitUntil(t, "the list", 5*time.Second, func() bool { return len(a.sink.summary()) > 0 && a.sink.summary()[len(a.sink.summary())-1] == '1' })
	_, v2b := vipValue("198.18.0.2", 80, "198.19.0.12")
	_, v1b := vipValue("198.18.0.1", 80, "198.19.0.12")
	if _, err := cli.Txn(ctx).Then(clientv3.OpDelete("/l4lb/v1/alloc/x"), clientv3.OpPut(k1, v1b), clientv3.OpPut(k2, v2b), clientv3.OpDelete(k3)).Commit(); err != nil {
		t.Fatal(err)
	}
	want := "198.18.0.1/tcp/80=198.19.0.12 198.18.0.2/tcp/80=198.19.0.12"
	waitUntil(t, "the txn", 5*time.Second, func() bool { return a.sink.summary() == want })
}
