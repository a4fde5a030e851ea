#!/usr/bin/env python3
"""Probe: SQLAlchemy 2.x (the Superset path) over psycopg and/or psycopg2.

Usage: sqlalchemy_probe.py [psycopg] [psycopg2]   (default: both)

Per driver: engine connect (dialect initialisation: pg_catalog.version(),
current_schema(), SHOWs, the hstore probe), the Inspector (schemas, tables,
columns, has_table), a bound-parameter query, and pandas.read_sql of TPC-H q01
compared with the answer file.
"""

import sys
import urllib.parse

import pandas
import sqlalchemy
from sqlalchemy import text

from probe_common import (
    LINEITEM_COLUMNS, LINEITEM_KINDS, TPCH_TABLES, Probe, compare_to_answer,
    expect_eq, expect_true, pg_settings, tpch_answer, tpch_query,
)

DRIVERS = ("psycopg", "psycopg2")


def engine_for(driver):
    s = pg_settings()
    user = urllib.parse.quote(s["user"], safe="")
    auth = user if not s["password"] else "%s:%s" % (user, urllib.parse.quote(s["password"], safe=""))
    url = "postgresql+%s://%s@%s:%d/%s" % (driver, auth, s["host"], s["port"], s["dbname"])
    return sqlalchemy.create_engine(url, connect_args={"connect_timeout": 10},
                                    pool_pre_ping=False)


def check_connect(engine):
    with engine.connect() as conn:
        expect_eq(conn.execute(text("SELECT 1")).scalar(), 1, "SELECT 1")
        expect_eq(conn.execute(text("SELECT current_schema()")).scalar(), "public", "current_schema()")
    info = engine.dialect.server_version_info
    expect_true(isinstance(info, tuple) and info and info[0] >= 10,
                "server_version_info should be a version >= 10, got %r" % (info,))
    expect_eq(engine.dialect.default_schema_name, "public", "default_schema_name")


def check_bound_params(engine):
    with engine.connect() as conn:
        got = conn.execute(text("SELECT n_name FROM nation WHERE n_nationkey = :k"), {"k": 7}).all()
        expect_eq([tuple(r) for r in got], [("GERMANY",)], "int parameter")
        got = conn.execute(text("SELECT n_nationkey FROM nation WHERE n_name = :n"),
                           {"n": "JAPAN"}).scalar()
        expect_eq(got, 12, "str parameter")


def check_schema_names(engine):
    names = sqlalchemy.inspect(engine).get_schema_names()
    expect_true("public" in names, "public missing from %r" % (names,))


def check_table_names(engine):
    insp = sqlalchemy.inspect(engine)
    expect_eq(sorted(insp.get_table_names()), TPCH_TABLES, "get_table_names()")
    expect_eq(sorted(insp.get_table_names(schema="public")), TPCH_TABLES,
              "get_table_names(schema='public')")


def check_columns(engine):
    cols = sqlalchemy.inspect(engine).get_columns("lineitem")
    expect_eq([c["name"] for c in cols], LINEITEM_COLUMNS, "lineitem column names")
    expected_class = {"int8": sqlalchemy.BIGINT, "int4": sqlalchemy.INTEGER,
                      "numeric": sqlalchemy.NUMERIC, "date": sqlalchemy.DATE,
                      "text": sqlalchemy.TEXT}
    for c in cols:
        want = expected_class[LINEITEM_KINDS[c["name"]]]
        expect_true(isinstance(c["type"], want),
                    "%s: expected %s, got %r" % (c["name"], want.__name__, c["type"]))
    qty = next(c for c in cols if c["name"] == "l_quantity")
    expect_eq((qty["type"].precision, qty["type"].scale), (15, 2), "l_quantity precision/scale")


def check_has_table(engine):
    insp = sqlalchemy.inspect(engine)
    expect_true(insp.has_table("lineitem"), "has_table('lineitem') is False")
    expect_true(insp.has_table("nation", schema="public"), "has_table('nation', 'public') is False")
    expect_true(not insp.has_table("no_such_table_flotilla_probe"),
                "has_table on a missing table is True")


def check_read_sql_q01(engine):
    header, answer = tpch_answer(1)
    df = pandas.read_sql(tpch_query(1), engine)
    expect_eq(df.shape, (4, 10), "q01 shape")
    rows = [tuple(r) for r in df.itertuples(index=False, name=None)]
    compare_to_answer(rows, header, answer, list(df.columns))


def run_driver(probe, driver):
    engine = engine_for(driver)
    try:
        if not probe.check("%s: engine connect and dialect initialisation" % driver,
                           check_connect, engine):
            return
        probe.check("%s: bound parameters" % driver, check_bound_params, engine)
        probe.check("%s: inspect get_schema_names has public" % driver, check_schema_names, engine)
        probe.check("%s: inspect get_table_names = 8 TPC-H tables" % driver, check_table_names, engine)
        probe.check("%s: inspect get_columns('lineitem')" % driver, check_columns, engine)
        probe.check("%s: inspect has_table" % driver, check_has_table, engine)
        probe.check("%s: pandas.read_sql TPC-H q01 equals the answer" % driver,
                    check_read_sql_q01, engine)
    finally:
        engine.dispose()


def main(argv):
    drivers = argv or list(DRIVERS)
    bad = [d for d in drivers if d not in DRIVERS]
    if bad:
        print("unknown driver(s) %s; use %s" % (", ".join(bad), " ".join(DRIVERS)), file=sys.stderr)
        return 2
    probe = Probe("SQLAlchemy %s, pandas %s; drivers: %s"
                  % (sqlalchemy.__version__, pandas.__version__, " ".join(drivers)))
    for d in drivers:
        run_driver(probe, d)
    return probe.finish()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
