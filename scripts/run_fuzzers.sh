#!/usr/bin/env bash
# Runs every libFuzzer target of a fuzz build for SECONDS each (a few for a
# share of it, see `percent` below), starting from the seed corpus beside
# its source (src/<dir>/fuzz_corpus/<name>/).
# Exit status is non-zero when any target finds a crash, leak or timeout.
#   scripts/run_fuzzers.sh BUILD_DIR SECONDS
set -euo pipefail
build=$(cd "${1:?build dir}" && pwd)
seconds=${2:-60}
here=$(cd "$(dirname "$0")/.." && pwd)
# Targets whose input is local configuration rather than network input get
# a share of the time: percent of SECONDS (default 100).
declare -A percent=([pipeline_config]=50 [http_proxy]=25)
mapfile -t targets < <(find "$build/src" -maxdepth 3 -type f -name '*_fuzz' -perm -u+x | sort)
if [ ${#targets[@]} -eq 0 ]; then
  echo "run_fuzzers: no fuzz targets in $build" >&2
  exit 1
fi
status=0
for target in "${targets[@]}"; do
  name=$(basename "$target" _fuzz)
  component=$(dirname "${target#"$build/src/"}")  # serve, serve/pipeline, ...
  seeds="$here/src/$component/fuzz_corpus/$name"
  budget=$(( seconds * ${percent[$name]:-100} / 100 ))
  work=$(mktemp -d)
  [ -d "$seeds" ] && cp -r "$seeds/." "$work/"
  echo "fuzz: $name for ${budget}s (seeds: $(ls "$work" | wc -l))"
  if ! (cd "$work" && "$target" -max_total_time="$budget" -max_len=65536 -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 "$work" >"$work.log" 2>&1); then
    echo "fuzz: $name FAILED; log tail:" >&2
    tail -n 60 "$work.log" >&2
    status=1
  else
    grep -E 'stat::number_of_executed_units|Done' "$work.log" | tail -n 2 || true
  fi
  rm -rf "$work" "$work.log"
done
exit $status
