#!/usr/bin/env bash
# make demo: the main job end to end on embedded defaults, on this machine:
#   a hub on SQLite (its own CA, HTTPS on loopback) -> an admin token and a
#   trusted release key -> one device enrolled with a bootstrap file (an
#   outpost-agent supervising its own outpost-serve) -> a signed release
#   built from a demo model, pushed and rolled out -> inference through the
#   device -> a second release rolled out over it -> the fleet's state, the
#   rollout's progress and the hub's URLs.
# Interactive: runs until Ctrl-C, then stops everything cleanly. Not on a
# terminal (CI): stops at the end. Run it again at will: it starts afresh.
set -euo pipefail
build=${1:-build}
here=$(cd "$(dirname "$0")/.." && pwd)
bin="$here/$build/src"
for b in hub/outpost-hub agent/outpost-agent serve/outpost-serve cli/outpost; do
  [ -x "$bin/$b" ] || { echo "demo: $bin/$b not built (run make build)" >&2; exit 1; }
done
hubbin="$bin/hub/outpost-hub"
agentbin="$bin/agent/outpost-agent"
outpost="$bin/cli/outpost"

work="$here/var/demo"
pids=()
cleanup() {
  trap - EXIT INT TERM
  echo
  echo "== stopping the device and the hub"
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    if kill -0 "${pids[i]}" 2>/dev/null; then
      kill -TERM "${pids[i]}"
      wait "${pids[i]}" 2>/dev/null || true
    fi
  done
  echo "   stopped (logs and state stay in $work until the next run)"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rm -rf "$work"
mkdir -p "$work/device/trust" "$work/release"
step() { echo; echo "== $*"; }
wait_file() { for _ in $(seq 1 300); do [ -s "$1" ] && return 0; sleep 0.1; done; return 1; }

step "release signing key (kept by the release engineer; devices trust its public half)"
"$outpost" keys generate --out "$work/keys" --name demo-release
cp "$work/keys/demo-release.pub" "$work/device/trust/"

step "hub on SQLite in $work/hub (no passwords: an admin token is created explicitly)"
token=$("$hubbin" admin create-token --data "$work/hub" --name demo-admin --role admin 2>/dev/null)
"$hubbin" admin trust-key --data "$work/hub" "$work/keys/demo-release.pub"
"$hubbin" serve --data "$work/hub" --port 0 --port-file "$work/hub.port" \
  --device-poll-interval 10 --rollout-tick 0.5 >"$work/hub.log" 2>&1 &
pids+=($!)
wait_file "$work/hub.port" || { cat "$work/hub.log"; exit 1; }
hub="https://127.0.0.1:$(cat "$work/hub.port")"
export OUTPOST_HUB_URL="$hub" OUTPOST_HUB_TOKEN="$token" OUTPOST_HUB_CA="$work/hub/tls/ca.pem"
echo "   $hub (CA $OUTPOST_HUB_CA)"
"$outpost" whoami

step "one device: a bootstrap file, then outpost-agent (it enrols, pins the hub's CA, runs outpost-serve)"
"$outpost" bootstrap create --device-id store-42-cam-1 --site store-42 --label line=checkout \
  --out "$work/device/bootstrap.json"
"$agentbin" run --state-dir "$work/device/state" --trust-dir "$work/device/trust" \
  --serve-binary "$bin/serve/outpost-serve" --bootstrap "$work/device/bootstrap.json" \
  --soak 2 --hub-wait 10 --report-interval 1 --telemetry-interval 5 >"$work/agent.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  "$outpost" device show store-42-cam-1 >/dev/null 2>&1 && break
  sleep 0.2
done
"$outpost" device list

build_release() {  # name sequence model-version answer-offset
  local src="$work/release/src-$1"
  mkdir -p "$src/models/add_one/1"
  cp "$here/$build/test-models/add_one/$3/model.onnx" "$src/models/add_one/1/"
  cat >"$src/selftest.json" <<JSON
[{"name": "adds", "model": "add_one",
  "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}],
  "expected_outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 4],
                        "data": [$((1 + $4)), $((2 + $4)), $((3 + $4)), $((4 + $4))]}]}]
JSON
  "$outpost" bundle build --models "$src/models" --self-test "$src/selftest.json" --name "$1" \
    --sequence "$2" --sign-key "$work/keys/demo-release.key" --out "$work/release/$1.tar.zst"
}

infer() {
  local port
  port=$(sed -E 's/.*"http": *([0-9]+).*/\1/' "$work/device/state/current/port.json")
  echo "   POST http://127.0.0.1:$port/v2/models/add_one/infer  x = [[1, 2, 3, 4]]"
  echo -n "   -> "
  curl -s -X POST "http://127.0.0.1:$port/v2/models/add_one/infer" \
    -H 'Content-Type: application/json' \
    -d '{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}'
  echo
}

step "release demo-1 (y = x + 1): build, sign, push, roll out"
build_release demo-1 1 1 1
"$outpost" release push "$work/release/demo-1.tar.zst"
"$outpost" rollout start demo-1 --waves 1,100% --soak 2 --watch

step "inference through the device"
infer

step "release demo-2 (y = x + 2) over it: the device verifies, installs into its other slot, self-tests, soaks, switches"
build_release demo-2 2 2 2
"$outpost" release push "$work/release/demo-2.tar.zst"
"$outpost" rollout start demo-2 --waves 1,100% --soak 2 --watch
for _ in $(seq 1 100); do
  grep -q '"release": "demo-2"' "$work/device/state/state.json" 2>/dev/null && break
  sleep 0.2
done
sleep 1
infer

step "the fleet as the hub sees it"
"$outpost" device list
"$outpost" device events store-42-cam-1 | head -20
"$outpost" rollout list

step "telemetry and alerts the hub keeps (docs/alerts.md)"
"$outpost" telemetry uptime_s --since 1h
"$outpost" alerts --state all

step "fleet metrics (Prometheus text): $hub/metrics"
curl -s --cacert "$OUTPOST_HUB_CA" "$hub/metrics" | grep -E '^outpost_hub_(devices|devices_by_release)\{' || true

cat <<EOF

== done
   hub API:     $hub/api/v1   (OpenAPI: docs/openapi.yaml)
   hub metrics: $hub/metrics
   dashboard:   $hub/   (sign in with the admin token in $work/token;
                the browser will ask you to trust the hub's CA $OUTPOST_HUB_CA)
   CLI:         export OUTPOST_HUB_URL=$hub OUTPOST_HUB_CA=$OUTPOST_HUB_CA \\
                       OUTPOST_HUB_TOKEN=<the admin token in $work/token>
                $outpost device list
   logs:        $work/hub.log, $work/agent.log
EOF
echo "$token" >"$work/token"
chmod 600 "$work/token"
if [ -t 0 ]; then
  echo
  echo "The hub and the device keep running; press Ctrl-C to stop them."
  while true; do sleep 3600; done
fi
