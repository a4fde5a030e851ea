#!/usr/bin/env python3
"""Probe: psycopg2 against a Postgres-wire server (PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE).

psycopg2 uses only the simple Query protocol: parameters are interpolated into
the SQL text on the client (strings quoted as '...', dates as '...'::date).
Autocommit is off, so every transaction starts with a plain BEGIN.
"""

import datetime
import decimal
import sys

import psycopg2
import psycopg2.errors
import psycopg2.extensions

from probe_common import (
    NATIONS, NATION_REGION, ORDER1_LINE1, ORDER1_MIN_SHIPDATE, ORDER1_SUM_QTY,
    REGIONS, Probe, compare_to_answer, expect_eq, expect_true, pg_settings,
    tpch_answer, tpch_query,
)

INT4, INT8, TEXT, NUMERIC, DATE = 23, 20, 25, 1700, 1082


def connect():
    s = pg_settings()
    kw = dict(host=s["host"], port=s["port"], user=s["user"], dbname=s["dbname"],
              connect_timeout=10)
    if s["password"]:
        kw["password"] = s["password"]
    return psycopg2.connect(**kw)


def check_connect():
    conn = connect()
    try:
        cur = conn.cursor()
        cur.execute("SELECT 1")
        expect_eq(cur.fetchall(), [(1,)], "SELECT 1")
        expect_eq(conn.get_transaction_status(), psycopg2.extensions.TRANSACTION_STATUS_INTRANS,
                  "transaction status after BEGIN")
        expect_true(conn.server_version >= 100000,
                    "server_version should be >= 10, got %r" % conn.server_version)
        expect_eq(conn.encoding, "UTF8", "client encoding")
    finally:
        conn.close()


def check_simple_queries():
    conn = connect()
    try:
        cur = conn.cursor()
        cur.execute("SELECT n_nationkey, n_name, n_regionkey FROM nation ORDER BY n_nationkey")
        expect_eq(cur.fetchall(), [(i, NATIONS[i], NATION_REGION[i]) for i in range(25)],
                  "nation rows")
        cur.execute("SELECT r_name, count(*) FROM nation JOIN region ON n_regionkey = r_regionkey "
                    "GROUP BY r_name ORDER BY r_name")
        expect_eq(cur.fetchall(), [(r, 5) for r in REGIONS], "nations per region")
        cur.execute("SELECT count(*) FROM lineitem")
        expect_eq(cur.fetchone(), (600572,), "lineitem rows at SF0.1")
    finally:
        conn.close()


def check_interpolated_params():
    conn = connect()
    try:
        cur = conn.cursor()
        cur.execute("SELECT n_name FROM nation WHERE n_nationkey = %s", (7,))
        expect_eq(cur.fetchall(), [("GERMANY",)], "int parameter")
        cur.execute("SELECT n_nationkey FROM nation WHERE n_name = %s OR n_name = %s ORDER BY 1",
                    ("UNITED KINGDOM", "O'Brien"))
        expect_eq(cur.fetchall(), [(23,)], "str parameters (one with a quote)")
        cur.execute("SELECT n_name FROM nation WHERE n_nationkey = %(k)s", {"k": 24})
        expect_eq(cur.fetchall(), [("UNITED STATES",)], "named parameter")
        cur.execute("SELECT count(*) FROM lineitem WHERE l_orderkey = %s AND l_quantity > %s",
                    (1, decimal.Decimal("20")))
        expect_eq(cur.fetchone(), (4,), "Decimal parameter")
        cur.execute("SELECT count(*) FROM lineitem WHERE l_orderkey = %s AND l_shipdate >= %s",
                    (1, datetime.date(1996, 3, 1)))
        expect_eq(cur.fetchone(), (4,), "date parameter ('...'::date)")
        cur.execute("SELECT n_name FROM nation WHERE n_nationkey IN %s ORDER BY n_nationkey",
                    ((2, 3),))
        expect_eq(cur.fetchall(), [("BRAZIL",), ("CANADA",)], "tuple parameter (IN list)")
        conn.rollback()
    finally:
        conn.close()


def check_types():
    conn = connect()
    try:
        cur = conn.cursor()
        cur.execute("SELECT sum(l_quantity), min(l_shipdate) FROM lineitem WHERE l_orderkey = 1")
        row = cur.fetchone()
        expect_eq(row, (ORDER1_SUM_QTY, ORDER1_MIN_SHIPDATE), "sum/min values")
        expect_true(isinstance(row[0], decimal.Decimal), "sum should be Decimal, got %r" % type(row[0]))
        expect_true(type(row[1]) is datetime.date, "min should be date, got %r" % type(row[1]))
        cur.execute("SELECT l_orderkey, l_linenumber, l_quantity, l_extendedprice, l_shipdate, "
                    "l_returnflag FROM lineitem WHERE l_orderkey = 1 ORDER BY l_linenumber LIMIT 1")
        expect_eq(cur.fetchone(), ORDER1_LINE1, "first line of order 1")
    finally:
        conn.close()


def check_description():
    conn = connect()
    try:
        cur = conn.cursor()
        cur.execute("SELECT l_orderkey, l_linenumber, l_quantity, l_shipdate, l_returnflag "
                    "FROM lineitem WHERE l_orderkey = 1 LIMIT 1")
        desc = cur.description
        expect_eq([d.name for d in desc],
                  ["l_orderkey", "l_linenumber", "l_quantity", "l_shipdate", "l_returnflag"],
                  "column names")
        expect_eq([d.type_code for d in desc], [INT8, INT4, NUMERIC, DATE, TEXT], "type OIDs")
        expect_true(desc[2].type_code in psycopg2.extensions.DECIMAL.values,
                    "numeric column should map to DECIMAL")
        expect_true(desc[3].type_code in psycopg2.extensions.DATE.values,
                    "date column should map to DATE")
    finally:
        conn.close()


def check_error_recovery():
    conn = connect()
    try:
        cur = conn.cursor()
        try:
            cur.execute("SELECT * FROM no_such_table_flotilla_probe")
        except psycopg2.errors.UndefinedTable as e:
            expect_eq(e.pgcode, "42P01", "SQLSTATE")
        else:
            raise AssertionError("query on a missing table did not raise")
        conn.rollback()
        cur = conn.cursor()
        cur.execute("SELECT n_name FROM nation WHERE n_nationkey = %s", (7,))
        expect_eq(cur.fetchone(), ("GERMANY",), "query after rollback")
    finally:
        conn.close()


def check_named_cursor():
    conn = connect()
    try:
        cur = conn.cursor(name="p2cur")
        cur.itersize = 10
        cur.execute("SELECT n_nationkey, n_name FROM nation ORDER BY n_nationkey")
        first = cur.fetchmany(7)
        rest = cur.fetchall()
        expect_eq(first + rest, list(enumerate(NATIONS)), "cursor rows")
        cur.close()
        conn.commit()
    finally:
        conn.close()


def check_q06():
    header, answer = tpch_answer(6)
    conn = connect()
    try:
        cur = conn.cursor()
        cur.execute(tpch_query(6))
        compare_to_answer(cur.fetchall(), header, answer, [d.name for d in cur.description])
    finally:
        conn.close()


def main():
    probe = Probe("psycopg2 %s" % psycopg2.__version__)
    if not probe.check("connect and SELECT 1", check_connect):
        return probe.finish()
    probe.check("simple queries (nation, join, count)", check_simple_queries)
    probe.check("client-side interpolated parameters", check_interpolated_params)
    probe.check("numeric and date values", check_types)
    probe.check("cursor.description names and type OIDs", check_description)
    probe.check("error 42P01 then rollback and recovery", check_error_recovery)
    probe.check("named cursor (DECLARE/FETCH)", check_named_cursor)
    probe.check("TPC-H q06 equals the answer", check_q06)
    return probe.finish()


if __name__ == "__main__":
    sys.exit(main())
