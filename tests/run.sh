#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need,
# builds the `flotilla` binary, runs every test. `.ci/run` calls this.
set -euo pipefail
cd "$(dirname "$0")/.."

phase() { printf '\n== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

phase "prerequisites"
need_apt=()
command -v psql >/dev/null || need_apt+=(postgresql-client)
command -v cc >/dev/null || need_apt+=(build-essential)
command -v python3 >/dev/null || need_apt+=(python3 python3-pip)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
# The compose test builds its base image with debootstrap (tests/compose/).
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
if ((${#need_apt[@]})); then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi
# An S3-compatible server for the object-store tests.
if ! python3 -c "import moto.server, flask" >/dev/null 2>&1; then
  python3 -m pip install -q "moto[server]"
fi
# NVRTC, which compiles the GPU kernels (no GPU needed): the GPU tests fail
# without it.
# (The library file is checked, not the import: an uninstalled wheel can
# leave its namespace directory behind.)
if ! python3 -c "import nvidia.cuda_nvrtc as m, os, sys; sys.exit(not os.path.exists(os.path.join(list(m.__path__)[0], 'lib', 'libnvrtc.so.12')))" >/dev/null 2>&1; then
  python3 -m pip install -q "nvidia-cuda-nvrtc-cu12>=12.9,<13"
fi
# Real clients for the client matrix (tests/integration/clients.rs): psql, pgjdbc,
# psqlODBC + unixODBC, a JDK, and a virtualenv with psycopg, SQLAlchemy, pyodbc, ADBC.
bash tests/clients/setup.sh
if [ ! -d ../shared/tpch ] && [ -z "${FLOTILLA_SHARED:-}" ]; then
  echo "../shared/tpch (TPC-H queries and answers) is missing beside the repository" >&2
  exit 1
fi

phase "build"
start=$(date +%s)
cargo build --locked --workspace --all-targets
echo "build: $(( $(date +%s) - start )) s"

# The chaos suite (real processes killed, faults injected) and the compose
# cluster run in a phase of their own, timed apart (budget: 15 minutes).
chaos='test(/^chaos::/) | test(/^compose::/)'
run_tests() {
  if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --locked --workspace --no-fail-fast --retries 0 -E "$1"
  else
    cargo test --locked --workspace --no-fail-fast -- $2
  fi
}

phase "tests"
start=$(date +%s)
run_tests "not ($chaos)" "--skip chaos:: --skip compose::"
echo "tests: $(( $(date +%s) - start )) s"

phase "chaos and compose tests"
start=$(date +%s)
run_tests "$chaos" "chaos:: compose::"
echo "chaos and compose tests: $(( $(date +%s) - start )) s"

phase "benchmark smoke run"
# The TPC-H harness at SF0.1, one run, and the micro-benchmarks at small sizes,
# built with the test profile: they keep the harnesses working and check every
# answer; timings are not asserted.
start=$(date +%s)
target_dir="$(cargo metadata --locked --format-version 1 --no-deps \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
"$target_dir/debug/tpch" --quick
"$target_dir/debug/micro" --quick
"$target_dir/debug/gpu" --quick
echo "benchmark smoke: $(( $(date +%s) - start )) s"
