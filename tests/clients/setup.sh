#!/usr/bin/env bash
# Installs what the client probes in tests/clients need. Idempotent, reads no stdin.
#
#   bash tests/clients/setup.sh
#
# - Debian packages (only those missing): postgresql-client, libpostgresql-jdbc-java,
#   odbc-postgresql, unixodbc, default-jdk-headless (skipped when javac exists),
#   python3-venv (only when `python3 -m venv` cannot work).
# - A virtualenv at ${FLOTILLA_VENV:-$HOME/.cache/flotilla/venv} with the pinned
#   packages of requirements.txt next to this script; reused when it already has them.
#
# Environment: FLOTILLA_VENV (venv path), PYTHON (interpreter for the venv, default python3).
# Prints the venv path last as "FLOTILLA_VENV=<path>".
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${FLOTILLA_VENV:-$HOME/.cache/flotilla/venv}"
python="${PYTHON:-python3}"
req="$here/requirements.txt"
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

say() { echo "[clients/setup] $*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        say "need root (or sudo) for: $*" >&2
        return 1
    fi
}

# ---- Debian packages ----
missing=()
have_pkg() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]; }
for p in postgresql-client libpostgresql-jdbc-java odbc-postgresql unixodbc; do
    have_pkg "$p" || missing+=("$p")
done
if ! command -v javac >/dev/null 2>&1; then
    missing+=(default-jdk-headless)
fi
if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi
if [ "${#missing[@]}" -gt 0 ]; then
    say "apt-get install ${missing[*]}"
    as_root apt-get update -qq
    as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    say "installed ${missing[*]}"
else
    say "Debian packages already present (postgresql-client, libpostgresql-jdbc-java, odbc-postgresql, unixodbc, javac)"
fi

# The Unicode psqlODBC driver must be registered with unixODBC.
odbc_drivers="$(odbcinst -q -d 2>/dev/null || true)"
if ! grep -qxF '[PostgreSQL Unicode]' <<<"$odbc_drivers"; then
    say "registering psqlODBC drivers with odbcinst"
    as_root odbcinst -i -d -f /usr/share/psqlodbc/odbcinst.ini.template >/dev/null
fi
[ -f /usr/share/java/postgresql.jar ] || { say "missing /usr/share/java/postgresql.jar" >&2; exit 1; }

# ---- Python virtualenv ----
stamp="$venv/.flotilla-clients-requirements"
imports='import psycopg, psycopg2, sqlalchemy, pandas, pyodbc, adbc_driver_manager, adbc_driver_flightsql, pyarrow, polars'
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && cmp -s "$req" "$stamp" \
        && "$venv/bin/python" -c "$imports" >/dev/null 2>&1; then
    say "venv $venv already has the pinned packages"
else
    if [ ! -x "$venv/bin/python" ]; then
        say "creating venv $venv with $("$python" --version 2>&1)"
        mkdir -p "$(dirname "$venv")"
        "$python" -m venv "$venv"
    else
        say "updating venv $venv"
    fi
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q -r "$req"
    "$venv/bin/python" -c "$imports"
    cp "$req" "$stamp"
    say "installed: $("$venv/bin/python" -m pip freeze | grep -iE '^(psycopg|psycopg2-binary|sqlalchemy|pandas|pyodbc|adbc-driver-[a-z]+|pyarrow|polars)==' | tr '\n' ' ')"
fi
echo "FLOTILLA_VENV=$venv"
