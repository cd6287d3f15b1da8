#!/usr/bin/env bash
# make demo: the main job end to end on embedded defaults.
# For now (the runtime): generate a demo model repository, start
# outpost-serve on it, send real inference requests (JSON and binary
# tensors), print the results and an excerpt of /metrics, stop cleanly.
set -euo pipefail
build=${1:-build}
here=$(cd "$(dirname "$0")/.." && pwd)
serve="$build/src/serve/outpost-serve"
[ -x "$serve" ] || { echo "demo: $serve not built (run make build)" >&2; exit 1; }

work="$here/var/demo"
rm -rf "$work"
mkdir -p "$work"
echo "== generating the demo model repository in $work/models"
/usr/bin/python3 "$here/scripts/gen_models.py" --out "$work/models" >/dev/null
rm -rf "$work/models/heavy" "$work/models/fixed"
echo "version_policy: all   # serve versions 1 and 2 side by side" >"$work/models/add_one/config.yaml"
cat >"$work/models/tiny/config.yaml" <<'YAML'
max_batch_size: 8
dynamic_batching:
  max_queue_delay_us: 200
execution_providers: [cuda, cpu]   # no GPU here: falls back to CPU, visibly
YAML

echo "== starting outpost-serve"
"$serve" --model-repository "$work/models" --http-port 0 --port-file "$work/port.json" \
  >"$work/serve.log" 2>&1 &
pid=$!
cleanup() {
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    wait "$pid" || true
  fi
}
trap cleanup EXIT INT TERM
for _ in $(seq 1 300); do
  [ -s "$work/port.json" ] && break
  sleep 0.05
done
port=$(sed -E 's/[^0-9]*([0-9]+).*/\1/' "$work/port.json")
url="http://127.0.0.1:$port"
for _ in $(seq 1 300); do
  curl -sf "$url/v2/health/ready" >/dev/null && break
  sleep 0.05
done
curl -sf "$url/v2/health/ready" >/dev/null || { cat "$work/serve.log"; exit 1; }
echo "   listening on $url (log: $work/serve.log)"

echo
echo "== model metadata: GET $url/v2/models/tiny"
curl -s "$url/v2/models/tiny"; echo

echo
echo "== JSON inference: add_one (newest version answers, y = x + 2)"
curl -s -X POST "$url/v2/models/add_one/infer" -H 'Content-Type: application/json' \
  -d '{"id":"demo-1","inputs":[{"name":"x","shape":[2,4],"datatype":"FP32","data":[[1,2,3,4],[5,6,7,8]]}]}'
echo
echo "== JSON inference: add_one version 1 (y = x + 1)"
curl -s -X POST "$url/v2/models/add_one/versions/1/infer" \
  -d '{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}'
echo

echo
echo "== binary tensor inference: tiny MLP, 64 floats in, 10 scores out"
header='{"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","parameters":{"binary_data_size":256}}],"outputs":[{"name":"output","parameters":{"binary_data":false}}]}'
{ printf '%s' "$header"
  /usr/bin/python3 -c 'import struct,sys; sys.stdout.buffer.write(struct.pack("<64f", *[((i*37)%17-8)/8 for i in range(64)]))'
} >"$work/request.bin"
curl -s -X POST "$url/v2/models/tiny/infer" -H "Inference-Header-Content-Length: ${#header}" \
  -H 'Content-Type: application/octet-stream' --data-binary @"$work/request.bin"
echo

echo
echo "== a bad request gets a clear error"
curl -s -X POST "$url/v2/models/add_one/infer" \
  -d '{"inputs":[{"name":"x","shape":[1,5],"datatype":"FP32","data":[1,2,3,4,5]}]}'
echo

echo
echo "== 200 more requests, then an excerpt of $url/metrics"
for i in $(seq 1 200); do
  curl -s -o /dev/null -X POST "$url/v2/models/add_one/infer" \
    -d '{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}'
done
curl -s "$url/metrics" | grep -E '^(outpost_inference_requests_total|outpost_inference_latency_seconds|outpost_model_loaded|outpost_execution_provider_fallbacks_total|process_resident_memory_bytes)' | head -20

echo
echo "== stopping outpost-serve (SIGTERM: queued requests finish first)"
cleanup
trap - EXIT INT TERM
echo "demo finished. The server was at $url; its log is $work/serve.log"
