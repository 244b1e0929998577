#!/usr/bin/env bash
# Interim demo (until the data plane lands): render the DC/OS documentation's
# example app into the ruleset l4lb would program, and explain it.
set -euo pipefail
cd "$(dirname "$0")/.."
app=examples/dcos-appc.json

echo "== The DC/OS documentation's example app ($app):"
cat "$app"
echo
echo "== l4lb render --source file:$app --vip-pool 198.18.0.0/16 --vip-pool6 fd00:198:18::/64"
bin/l4lb render --source "file:$app" --vip-pool 198.18.0.0/16 --vip-pool6 fd00:198:18::/64 --state-dir "$(mktemp -d)"
cat <<'TXT'

== What it shows
- Two named VIPs, myservice.marathon.l4lb.thisdcos.directory:6666 and :7777, share one
  address from the pool (a hash of the name). Each is an element of the map vips4 with its
  audit comment "name:port/proto app".
- The app has no running tasks, so both elements jump to the chain refuse: a client gets a
  TCP reset (or ICMP port unreachable for UDP) at once instead of a hang.
- With N healthy tasks the element jumps to lbN, which picks slot `numgen random mod N` of the
  shared backend map be4 and DNATs there. Nothing in the table is per VIP except elements.
TXT
