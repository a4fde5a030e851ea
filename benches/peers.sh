#!/usr/bin/env bash
# The peers' side of the TPC-H comparison: ../shared/bench/peers.py on
# DuckDB, Polars, DataFusion (Python) and Spark local, over the TPC-H tables
# Flotilla generated, rewritten as one Parquet file per table (what peers.py
# reads). Prints one JSON line per engine and a summary.
#
#   bash benches/peers.sh DATA_DIR [SF] [ENGINES]
#
# DATA_DIR is a Flotilla data dir holding tpch/sf<SF>/ (the tpch harness's
# --data-dir, or ./flotilla-data); SF defaults to 1; ENGINES to
# "duckdb polars datafusion spark". Installs its own virtualenv (PyPI wheels:
# release builds) under ~/.cache/flotilla/peers-venv and a JDK if Spark needs one.
set -euo pipefail
cd "$(dirname "$0")/.."
data_dir="${1:?usage: benches/peers.sh DATA_DIR [SF] [ENGINES]}"
sf="${2:-1}"
engines="${3:-duckdb polars datafusion spark}"
shared="${FLOTILLA_SHARED:-../shared}"
venv="${FLOTILLA_PEERS_VENV:-$HOME/.cache/flotilla/peers-venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check \
  duckdb polars datafusion pyarrow pyspark
if [[ " $engines " == *" spark "* ]] && ! command -v java >/dev/null; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq default-jre-headless
fi
src="$data_dir/tpch/sf$sf"
flat="$data_dir/peers/sf$sf"
if [ ! -f "$flat/lineitem.parquet" ]; then
  mkdir -p "$flat"
  "$venv/bin/python" - "$src" "$flat" <<'PY'
import os, sys
import pyarrow.dataset as ds, pyarrow.parquet as pq
src, out = sys.argv[1], sys.argv[2]
for table in sorted(os.listdir(src)):
    pq.write_table(ds.dataset(os.path.join(src, table), format="parquet").to_table(),
                   os.path.join(out, f"{table}.parquet"))
PY
fi
for engine in $engines; do
  "$venv/bin/python" "$shared/bench/peers.py" "$engine" "$flat" "$shared/tpch/queries" \
    --runs 3 --threads 2 2>/dev/null
done
