#!/usr/bin/env bash
# Installs everything Outpost needs to build, test, benchmark and demo on a
# fresh Debian 12 machine. Idempotent: a second run changes nothing.
#
#   scripts/deps.sh            Debian packages + ONNX Runtime
#   scripts/deps.sh --ort-only only (re)assemble ONNX Runtime
#
# ONNX Runtime resolution order (the first found wins):
#   1. ONNXRUNTIME_ROOT pointing at an official release folder (include/, lib/)
#   2. a system install (CMake config or pkg-config: Debian 13, Ubuntu 24.04+, Jetson)
#   3. third_party/onnxruntime/, assembled here from registry packages:
#      the 1.30.0 CPU library from npm `onnxruntime-node`, and the C/C++
#      headers from Debian 13's `libonnxruntime-dev` 1.21.0, fetched with a
#      private apt state directory. The system's apt sources are never changed.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
ort_dir="$here/third_party/onnxruntime"
cache="$here/third_party/cache"
ORT_NPM_VERSION=1.30.0
ORT_DEB_SUITE=trixie

log() { printf '[deps] %s\n' "$*" >&2; }
die() {
  printf '[deps] error: %s\n' "$*" >&2
  exit 1
}

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || die "run as root or install sudo"
  SUDO="sudo"
fi

PACKAGES=(
  # toolchain
  build-essential cmake ninja-build ccache clang libclang-rt-14-dev lld pkg-config
  git curl ca-certificates xz-utils zstd binutils
  # libraries (DESIGN.md, "Chosen dependencies")
  libboost1.74-dev libssl-dev prometheus-cpp-dev nlohmann-json3-dev libyaml-cpp-dev
  libspdlog-dev libfmt-dev libcli11-dev libabsl-dev libsodium-dev libsqlite3-dev
  libzstd-dev libpq-dev
  # the HTTPS client (mbedTLS: the agent loads no OpenSSL, docs/architecture.md)
  libmbedtls-dev
  # tests only: libarchive crafts hostile bundles and cross-checks our tar code
  libarchive-dev
  # gRPC API (KServe v2 GRPCInferenceService)
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  # pipelines: only the OpenCV modules used (libopencv-dev would pull VTK and Qt)
  libopencv-core-dev libopencv-imgproc-dev libopencv-imgcodecs-dev libopencv-videoio-dev
  # tests and benchmarks
  libgtest-dev libgmock-dev libbenchmark-dev prometheus
  # the HTTP client's proxy tests run tinyproxy (the executable only: the
  # `tinyproxy` package would also install and start a system service)
  tinyproxy-bin
  # the hub's store tests start a throwaway PostgreSQL 15 server (initdb +
  # postgres from /usr/lib/postgresql/15/bin in a temporary directory)
  postgresql-15
  # the dashboard's browser tests drive Debian's chromium with playwright-core
  chromium
  # model generation (real architectures, random weights)
  python3 python3-numpy python3-onnx python3-torch python3-torchvision
  # npm registry client (ONNX Runtime library; dashboard assets later)
  nodejs
)

install_packages() {
  local missing=() installed
  # dpkg-query exits 1 when it has never heard of a package: that is
  # "missing", not an error.
  installed=$( (dpkg-query -W -f='${Package} ${Status}\n' "${PACKAGES[@]}" 2>/dev/null || true) |
    awk '$NF == "installed" {print $1}')
  for p in "${PACKAGES[@]}"; do
    grep -qx "$p" <<<"$installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    log "Debian packages: all present"
    return
  fi
  log "installing: ${missing[*]}"
  $SUDO apt-get update -qq
  # nodejs may come from another apt source that ships npm inside it.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  if ! command -v npm >/dev/null; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends npm
  fi
}

system_ort() {
  if [ -n "${ONNXRUNTIME_ROOT:-}" ]; then
    [ -f "$ONNXRUNTIME_ROOT/include/onnxruntime_cxx_api.h" ] ||
      [ -f "$ONNXRUNTIME_ROOT/include/onnxruntime/onnxruntime_cxx_api.h" ] ||
      die "ONNXRUNTIME_ROOT=$ONNXRUNTIME_ROOT has no include/onnxruntime_cxx_api.h"
    log "ONNX Runtime: using ONNXRUNTIME_ROOT=$ONNXRUNTIME_ROOT"
    return 0
  fi
  for d in /usr/lib/*/cmake/onnxruntime /usr/lib/cmake/onnxruntime /usr/local/lib/cmake/onnxruntime; do
    if [ -f "$d/onnxruntimeConfig.cmake" ] && ls "$d"/../../libonnxruntime.so* >/dev/null 2>&1; then
      log "ONNX Runtime: using system install ($d)"
      return 0
    fi
  done
  if pkg-config --exists libonnxruntime 2>/dev/null; then
    log "ONNX Runtime: using system install (pkg-config)"
    return 0
  fi
  return 1
}

npm_arch() {
  case "$(uname -m)" in
    x86_64) echo x64 ;;
    aarch64 | arm64) echo arm64 ;;
    *) die "no ONNX Runtime build in onnxruntime-node for $(uname -m); set ONNXRUNTIME_ROOT" ;;
  esac
}

assemble_ort() {
  local stamp="$ort_dir/.assembled-$ORT_NPM_VERSION"
  if [ -f "$stamp" ] && [ -f "$ort_dir/lib/libonnxruntime.so.1" ] &&
    [ -f "$ort_dir/include/onnxruntime_cxx_api.h" ]; then
    log "ONNX Runtime: $ort_dir already assembled"
    return
  fi
  command -v npm >/dev/null || die "npm not found (install nodejs/npm)"
  mkdir -p "$cache"
  local tmp
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN

  # 1. Library: npm pack fetches the tarball only (no install scripts run).
  local tgz="$cache/onnxruntime-node-$ORT_NPM_VERSION.tgz"
  if [ ! -s "$tgz" ]; then
    log "fetching onnxruntime-node@$ORT_NPM_VERSION from the npm registry"
    (cd "$tmp" && npm pack --silent "onnxruntime-node@$ORT_NPM_VERSION" >/dev/null)
    mv "$tmp/onnxruntime-node-$ORT_NPM_VERSION.tgz" "$tgz"
  fi
  local arch
  arch=$(npm_arch)
  tar -xzf "$tgz" -C "$tmp" "package/bin/napi-v6/linux/$arch/libonnxruntime.so.1"

  # 2. Headers: Debian 13's libonnxruntime-dev, with a private apt state
  # directory that reuses the mirror of the system's own sources.
  local deb
  deb=$(ls "$cache"/libonnxruntime-dev_*.deb 2>/dev/null | head -n1 || true)
  if [ -z "$deb" ]; then
    local mirror
    mirror=$(grep -rhoE '^(URIs:|deb)[[:space:]]+(\[[^]]*\][[:space:]]+)?https?://[^[:space:]]+/debian/?' \
      /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null |
      grep -oE 'https?://[^[:space:]]+' | grep -v -- '-security' | head -n1 || true)
    [ -n "$mirror" ] || mirror="http://deb.debian.org/debian"
    log "fetching libonnxruntime-dev from $ORT_DEB_SUITE via $mirror (private apt state)"
    local A="$tmp/apt"
    mkdir -p "$A/lists/partial" "$A/cache/archives/partial" "$A/prefs" "$A/dl"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ${mirror%/} $ORT_DEB_SUITE main" >"$A/sources.list"
    local O=(-o "Dir::State=$A" -o "Dir::State::Lists=$A/lists" -o "Dir::State::status=/dev/null"
      -o "Dir::Cache=$A/cache" -o "Dir::Etc::SourceList=$A/sources.list"
      -o "Dir::Etc::SourceParts=/dev/null" -o "Dir::Etc::Preferences=/dev/null"
      -o "Dir::Etc::PreferencesParts=$A/prefs" -o "APT::Sandbox::User=root"
      -o "Debug::NoLocking=1")
    apt-get "${O[@]}" update -qq >/dev/null || die "apt-get update for $ORT_DEB_SUITE failed"
    (cd "$A/dl" && apt-get "${O[@]}" download libonnxruntime-dev >/dev/null) ||
      die "could not download libonnxruntime-dev from $ORT_DEB_SUITE"
    deb=$(ls "$A"/dl/libonnxruntime-dev_*.deb | head -n1)
    cp "$deb" "$cache/"
    deb="$cache/$(basename "$deb")"
  fi
  dpkg-deb -x "$deb" "$tmp/deb"

  rm -rf "$ort_dir"
  mkdir -p "$ort_dir/include" "$ort_dir/lib"
  cp -r "$tmp"/deb/usr/include/onnxruntime/. "$ort_dir/include/"
  install -m 0755 "$tmp/package/bin/napi-v6/linux/$arch/libonnxruntime.so.1" "$ort_dir/lib/libonnxruntime.so.1"
  ln -sf libonnxruntime.so.1 "$ort_dir/lib/libonnxruntime.so"
  {
    echo "library: npm onnxruntime-node@$ORT_NPM_VERSION ($arch)"
    echo "headers: $(basename "$deb")"
  } >"$ort_dir/SOURCE"
  touch "$stamp"
  log "ONNX Runtime assembled in $ort_dir"
}

if [ "${1:-}" != "--ort-only" ]; then
  install_packages
fi
if ! system_ort; then
  assemble_ort
fi
log "done"
