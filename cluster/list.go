package cluster

import (
	"context"
	"fmt"
	"maps"
	"slices"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/l4lb/l4lb/vip"
)

// DefaultPageSize is the number of keys one list request reads: about 5 MB
// of VIPs with 10 backends; at 50,000 VIPs a list is 10 requests (2.6 s
// here, against 3.4 s with pages of 1,000).
const DefaultPageSize = 5000

// List reads every key under prefix, page by page, all at the revision of
// the first page, so that the pages are one consistent snapshot. It returns
// the key-values in key order and that revision; a watch from rev+1 then
// misses nothing. A compacted revision between pages is an error (the
// caller lists again).
func List(ctx context.Context, kv clientv3.KV, prefix string, pageSize int) ([]*mvccpb.KeyValue, int64, error) {
	var out []*mvccpb.KeyValue
	rev, err := ListPages(ctx, kv, prefix, pageSize, func(page []*mvccpb.KeyValue) { out = append(out, page...) })
	return out, rev, err
}

// ListPages is List delivering each page to fn as it arrives (on the
// caller's goroutine), so that a caller can work on a page while etcd
// reads the next.
func ListPages(ctx context.Context, kv clientv3.KV, prefix string, pageSize int, fn func([]*mvccpb.KeyValue)) (int64, error) {
	if pageSize <= 0 {
		pageSize = DefaultPageSize
	}
	end := clientv3.GetPrefixRangeEnd(prefix)
	var rev int64
	key := prefix
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(int64(pageSize))}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := kv.Get(ctx, key, opts...)
		if err != nil {
			return 0, fmt.Errorf("list %s: %w", prefix, err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		if len(resp.Kvs) > 0 {
			fn(resp.Kvs)
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return rev, nil
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// Desired is every key the controller keeps under the layout for a state:
// the config, one allocation per named VIP, one value per VIP.
func (l Layout) Desired(c Config, s vip.State) map[string]string {
	out := make(map[string]string, len(s.VIPs)+len(s.Allocations.V4)+1)
	out[l.Config()] = string(EncodeConfig(c))
	allocs := Allocs(s.Allocations)
	for _, name := range slices.Sorted(maps.Keys(allocs)) {
		out[l.Alloc(name)] = string(EncodeAlloc(allocs[name]))
	}
	for _, v := range s.VIPs {
		out[l.VIPKey(v.Key())] = string(EncodeVIP(v))
	}
	return out
}

// Managed reports whether the controller owns key: config, allocations,
// VIPs; not the election.
func (l Layout) Managed(key string) bool {
	return key == l.Config() || hasPrefix(key, l.Allocs()) || hasPrefix(key, l.VIPs())
}

func hasPrefix(s, p string) bool { return len(s) >= len(p) && s[:len(p)] == p }
