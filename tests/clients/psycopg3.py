#!/usr/bin/env python3
"""Probe: psycopg 3 against a Postgres-wire server (PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE).

Exercises: simple and extended protocol, int2/text/numeric/date parameters,
binary results, named prepared statements, pipeline mode, COPY TO STDOUT,
server-side cursors (DECLARE/FETCH/CLOSE), SQLSTATEs and recovery, TPC-H q06.
"""

import datetime
import decimal
import sys

import psycopg
import psycopg.errors
from psycopg.pq import TransactionStatus

from probe_common import (
    NATIONS, ORDER1_LINE1, ORDER1_LINES, ORDER1_MIN_SHIPDATE, ORDER1_SUM_QTY,
    REGIONS, Probe, compare_to_answer, expect_eq, expect_true, pg_settings,
    tpch_answer, tpch_query,
)

# Standard PostgreSQL type OIDs, as psycopg reports them in cursor.description.
INT4, INT8, TEXT, NUMERIC, DATE, TIMESTAMP = 23, 20, 25, 1700, 1082, 1114


def connect(**kw):
    s = pg_settings()
    return psycopg.connect(host=s["host"], port=s["port"], user=s["user"],
                           password=s["password"], dbname=s["dbname"],
                           connect_timeout=10, **kw)


def check_connect():
    with connect() as conn:
        expect_eq(conn.execute("SELECT 1").fetchone(), (1,), "SELECT 1")
        expect_eq(conn.info.transaction_status, TransactionStatus.INTRANS,
                  "transaction status after implicit BEGIN")
        conn.rollback()
        expect_eq(conn.info.transaction_status, TransactionStatus.IDLE,
                  "transaction status after ROLLBACK")


def check_startup_parameters():
    with connect(autocommit=True) as conn:
        ds = conn.info.parameter_status("DateStyle") or ""
        expect_true(ds.startswith("ISO"), "DateStyle should start with ISO, got %r" % ds)
        expect_eq(conn.info.parameter_status("client_encoding"), "UTF8", "client_encoding")
        expect_eq(conn.info.parameter_status("standard_conforming_strings"), "on",
                  "standard_conforming_strings")
        expect_true(conn.info.server_version >= 100000,
                    "server_version should be >= 10, got %r" % conn.info.server_version)
        row = conn.execute("SELECT current_database(), current_schema()").fetchone()
        expect_eq(row, (pg_settings()["dbname"], "public"), "current_database(), current_schema()")


def check_set_show():
    with connect(autocommit=True) as conn:
        conn.execute("SET application_name = 'flotilla-probe'")
        expect_eq(conn.execute("SHOW application_name").fetchone(), ("flotilla-probe",),
                  "SHOW application_name")
        ds = conn.execute("SHOW DateStyle").fetchone()[0]
        expect_true(ds.startswith("ISO"), "SHOW DateStyle should start with ISO, got %r" % ds)


def check_params():
    with connect() as conn:
        # Python int goes out as int2 (binary); the column is int8.
        got = conn.execute("SELECT n_name FROM nation WHERE n_nationkey = %s", (7,)).fetchall()
        expect_eq(got, [("GERMANY",)], "int parameter")
        # str goes out with OID 0 (unknown), text format.
        got = conn.execute("SELECT n_nationkey, n_regionkey FROM nation WHERE n_name = %s",
                           ("UNITED STATES",)).fetchall()
        expect_eq(got, [(24, 1)], "str parameter")
        got = conn.execute(
            "SELECT count(*) FROM lineitem WHERE l_orderkey = %s AND l_quantity > %s",
            (1, decimal.Decimal("20"))).fetchone()
        expect_eq(got, (4,), "Decimal parameter")
        got = conn.execute(
            "SELECT count(*) FROM lineitem WHERE l_orderkey = %s AND l_shipdate >= %s",
            (1, datetime.date(1996, 3, 1))).fetchone()
        expect_eq(got, (4,), "date parameter")
        # A large int goes out as int8 / numeric rather than int2.
        got = conn.execute("SELECT count(*) FROM nation WHERE n_nationkey < %s",
                           (10_000_000_000,)).fetchone()
        expect_eq(got, (25,), "big int parameter")


def check_binary_results():
    with connect() as conn:
        cur = conn.cursor(binary=True)
        cur.execute("SELECT sum(l_quantity), min(l_shipdate), CAST(min(l_shipdate) AS timestamp) "
                    "FROM lineitem WHERE l_orderkey = 1")
        expect_eq([d.type_code for d in cur.description], [NUMERIC, DATE, TIMESTAMP],
                  "result type OIDs")
        expect_eq(cur.fetchone(),
                  (ORDER1_SUM_QTY, ORDER1_MIN_SHIPDATE,
                   datetime.datetime.combine(ORDER1_MIN_SHIPDATE, datetime.time())),
                  "binary numeric/date/timestamp")
        q = ("SELECT l_orderkey, l_linenumber, l_quantity, l_extendedprice, l_shipdate, l_returnflag "
             "FROM lineitem WHERE l_orderkey = 1 ORDER BY l_linenumber")
        cur.execute(q)
        expect_eq([d.type_code for d in cur.description],
                  [INT8, INT4, NUMERIC, NUMERIC, DATE, TEXT], "lineitem type OIDs")
        binary_rows = cur.fetchall()
        text_rows = conn.execute(q).fetchall()
        expect_eq(len(binary_rows), ORDER1_LINES, "row count")
        expect_eq(binary_rows[0], ORDER1_LINE1, "first row (binary)")
        expect_eq(binary_rows, text_rows, "binary rows vs text rows")


def check_prepare_true():
    with connect() as conn:
        cur = conn.cursor()
        for key in (3, 12, 21):
            cur.execute("SELECT n_name FROM nation WHERE n_nationkey = %s", (key,), prepare=True)
            expect_eq(cur.fetchall(), [(NATIONS[key],)], "prepare=True key %d" % key)


def check_prepare_threshold():
    with connect() as conn:
        cur = conn.cursor()
        # prepare_threshold is 5: executions 6.. use the named statement _pg3_N.
        for key in (0, 4, 8, 9, 13, 17, 18, 22, 24):
            cur.execute("SELECT n_name, n_regionkey FROM nation WHERE n_nationkey = %s", (key,))
            rows = cur.fetchall()
            expect_eq(len(rows), 1, "rows for key %d" % key)
            expect_eq(rows[0][0], NATIONS[key], "name for key %d" % key)
        # the same repeated with binary results
        bcur = conn.cursor(binary=True)
        for key in range(7):
            bcur.execute("SELECT r_name FROM region WHERE r_regionkey = %s", (key % 5,))
            expect_eq(bcur.fetchall(), [(REGIONS[key % 5],)], "binary prepared region %d" % key)


def check_pipeline():
    with connect() as conn:
        with conn.pipeline():
            c1 = conn.execute("SELECT count(*) FROM nation")
            c2 = conn.execute("SELECT r_name FROM region WHERE r_regionkey = %s", (3,))
            c3 = conn.execute("SELECT n_name FROM nation WHERE n_regionkey = %s ORDER BY n_name",
                              (0,))
            c4 = conn.cursor()
            c4.executemany("SELECT n_name FROM nation WHERE n_nationkey = %s",
                           [(1,), (2,), (3,)], returning=True)
        expect_eq(c1.fetchall(), [(25,)], "pipelined count(*)")
        expect_eq(c2.fetchall(), [("EUROPE",)], "pipelined region")
        africa = sorted(NATIONS[i] for i in range(25) if i in (0, 5, 14, 15, 16))
        expect_eq([r[0] for r in c3.fetchall()], africa, "pipelined nations of AFRICA")
        names = []
        while True:
            names.extend(r[0] for r in c4.fetchall())
            if not c4.nextset():
                break
        expect_eq(names, NATIONS[1:4], "executemany(returning=True) in pipeline")


def check_copy_out():
    with connect() as conn:
        cur = conn.cursor()
        with cur.copy("COPY (SELECT r_regionkey, r_name FROM region ORDER BY 1) TO STDOUT") as copy:
            rows = list(copy.rows())
        expect_eq(rows, [(str(i), name) for i, name in enumerate(REGIONS)], "COPY rows")
        # and typed
        with cur.copy("COPY (SELECT n_nationkey, n_name FROM nation ORDER BY 1) TO STDOUT") as copy:
            copy.set_types(["int8", "text"])
            rows = list(copy.rows())
        expect_eq(rows, list(enumerate(NATIONS)), "COPY typed rows")


def check_server_cursor():
    with connect() as conn:
        with conn.transaction():
            with conn.cursor(name="c1") as cur:
                cur.execute("SELECT n_nationkey, n_name FROM nation ORDER BY n_nationkey")
                expect_eq([d.name for d in cur.description], ["n_nationkey", "n_name"],
                          "cursor description")
                batches = [cur.fetchmany(10), cur.fetchmany(10), cur.fetchmany(10)]
                expect_eq([len(b) for b in batches], [10, 10, 5], "fetchmany batch sizes")
                rows = [r for b in batches for r in b]
                expect_eq(rows, list(enumerate(NATIONS)), "cursor rows")
                expect_eq(cur.fetchmany(10), [], "fetch past the end")
        # the connection is usable after the cursor was closed and committed
        expect_eq(conn.execute("SELECT count(*) FROM region").fetchone(), (5,), "after cursor")


def check_error_recovery():
    with connect() as conn:
        try:
            conn.execute("SELECT * FROM no_such_table_flotilla_probe")
        except psycopg.errors.UndefinedTable as e:
            expect_eq(e.sqlstate, "42P01", "SQLSTATE")
        else:
            raise AssertionError("query on a missing table did not raise")
        conn.rollback()
        expect_eq(conn.execute("SELECT n_name FROM nation WHERE n_nationkey = %s", (7,)).fetchone(),
                  ("GERMANY",), "query after rollback")
        # an error inside the extended protocol (with a parameter), then recovery
        try:
            conn.execute("SELECT * FROM no_such_table_flotilla_probe WHERE x = %s", (1,))
        except psycopg.errors.UndefinedTable:
            pass
        else:
            raise AssertionError("parameterised query on a missing table did not raise")
        conn.rollback()
        expect_eq(conn.execute("SELECT 2").fetchone(), (2,), "query after second rollback")


def check_syntax_error():
    with connect(autocommit=True) as conn:
        try:
            conn.execute("SELEC 1")
        except psycopg.errors.SyntaxError as e:
            expect_eq(e.sqlstate, "42601", "SQLSTATE")
        else:
            raise AssertionError("bad syntax did not raise")
        expect_eq(conn.execute("SELECT 3").fetchone(), (3,), "query after the error")


def check_q06():
    header, answer = tpch_answer(6)
    with connect() as conn:
        cur = conn.execute(tpch_query(6))
        rows = cur.fetchall()
        compare_to_answer(rows, header, answer, [d.name for d in cur.description])
        expect_true(isinstance(rows[0][0], decimal.Decimal),
                    "revenue should be numeric (Decimal), got %r" % type(rows[0][0]))


def main():
    probe = Probe("psycopg %s" % psycopg.__version__)
    if not probe.check("connect and SELECT 1", check_connect):
        return probe.finish()
    probe.check("startup parameters and current_database/current_schema", check_startup_parameters)
    probe.check("SET/SHOW", check_set_show)
    probe.check("parameters int/str/Decimal/date", check_params)
    probe.check("binary results numeric/date/timestamp/int8/int4/text", check_binary_results)
    probe.check("prepare=True named statements", check_prepare_true)
    probe.check("repeated execution past prepare_threshold", check_prepare_threshold)
    probe.check("pipeline mode", check_pipeline)
    probe.check("COPY (SELECT ...) TO STDOUT", check_copy_out)
    probe.check("server-side cursor DECLARE/FETCH/CLOSE", check_server_cursor)
    probe.check("error 42P01 then rollback and recovery", check_error_recovery)
    probe.check("syntax error 42601 then recovery", check_syntax_error)
    probe.check("TPC-H q06 equals the answer", check_q06)
    return probe.finish()


if __name__ == "__main__":
    sys.exit(main())
