#!/usr/bin/env bash
# An application's flow with curl against an API base URL (…/api/v0) given as the
# first argument: add, pin add, pin ls, pin rm, pin ls, second pin rm.
set -euo pipefail
API="$1"
fail() { echo "FAIL: $*" >&2; exit 1; }
tmp=$(mktemp); trap 'rm -f "$tmp"' EXIT
echo "curl flow $(date +%s%N)" >"$tmp"
cid=$(curl -sf -X POST -F "file=@$tmp;type=application/octet-stream" "$API/add?pin=false" |
  tail -n1 | sed -E 's/.*"Hash":"([^"]+)".*/\1/')
[[ -n "$cid" ]] || fail "add returned no hash"
[[ "$(curl -sf -X POST "$API/pin/add?arg=$cid")" == *"\"Pins\":[\"$cid\"]"* ]] || fail "pin/add"
curl -sf -X POST "$API/pin/ls?type=recursive" | grep -q "\"$cid\"" || fail "pin/ls does not list it"
curl -sf -X POST "$API/pin/ls?arg=$cid&stream=true" | grep -q '"Type":"recursive"' || fail "pin/ls by arg"
[[ "$(curl -sf -X POST "$API/pin/rm?arg=$cid")" == *"\"Pins\":[\"$cid\"]"* ]] || fail "pin/rm"
if curl -sf -X POST "$API/pin/ls?type=recursive" | grep -q "\"$cid\""; then fail "still listed"; fi
second=$(curl -s -w ' %{http_code}' -X POST "$API/pin/rm?arg=$cid")
[[ "$second" == *"not pinned"*" 500" ]] || fail "second pin/rm: $second"
echo "ok $cid"
