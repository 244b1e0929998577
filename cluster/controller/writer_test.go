package controller

import (
	"fmt"
	"strings"
	"testing"
)

func TestPlanWritesOnlyChanges(t *testing.T) {
	known := map[string]string{"/p/v1/config": "c", "/p/v1/vips/a": "1", "/p/v1/vips/b": "2", "/p/v1/vips/c": "3"}
	desired := map[string]string{"/p/v1/config": "c", "/p/v1/vips/a": "1", "/p/v1/vips/b": "22", "/p/v1/vips/d": "4"}
	got := Plan(known, desired)
	want := []Op{{Key: "/p/v1/vips/b", Value: "22"}, {Key: "/p/v1/vips/c", Delete: true}, {Key: "/p/v1/vips/d", Value: "4"}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("plan %v, want %v", got, want)
	}
	if ops := Plan(desired, desired); len(ops) != 0 {
		t.Fatalf("plan of nothing: %v", ops)
	}
}

func TestBatchesBounded(t *testing.T) {
	var ops []Op
	for i := range 300 {
		ops = append(ops, Op{Key: fmt.Sprintf("/k/%04d", i), Value: "v"})
	}
	b := Batches(ops, MaxTxnOps, MaxTxnBytes)
	if len(b) != 3 || len(b[0]) != 128 || len(b[1]) != 128 || len(b[2]) != 44 {
		t.Fatalf("batches of 300 small ops: %d", len(b))
	}
	// By bytes: 10 values of 300 KiB go 3 to a transaction.
	ops = ops[:0]
	for i := range 10 {
		ops = append(ops, Op{Key: fmt.Sprintf("/k/%d", i), Value: strings.Repeat("x", 300<<10)})
	}
	b = Batches(ops, MaxTxnOps, MaxTxnBytes)
	n := 0
	for _, batch := range b {
		size := 0
		for _, op := range batch {
			size += op.size()
		}
		if size > MaxTxnBytes || len(batch) > 3 {
			t.Fatalf("batch of %d ops, %d bytes", len(batch), size)
		}
		n += len(batch)
	}
	if n != 10 || len(b) != 4 {
		t.Fatalf("%d ops in %d batches", n, len(b))
	}
	// One op larger than the limit goes alone.
	b = Batches([]Op{{Key: "a"}, {Key: "b", Value: strings.Repeat("x", 2<<20)}, {Key: "c"}}, MaxTxnOps, MaxTxnBytes)
	if len(b) != 3 {
		t.Fatalf("oversized op: %d batches", len(b))
	}
	if len(Batches(nil, MaxTxnOps, MaxTxnBytes)) != 0 {
		t.Fatal("batches of nothing")
	}
}
