#!/usr/bin/env python3
"""Probe: psqlODBC (Debian's odbc-postgresql) through unixODBC and pyodbc.

Connection from PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE; the driver name
from ODBC_DRIVER (default "PostgreSQL Unicode", as registered in
/etc/odbcinst.ini); ODBC_EXTRA is appended to the connection string, e.g.
ODBC_EXTRA="Protocol=7.4-1;UseServerSidePrepare=0" for the simple-query mode.

On connect psqlODBC sends "SET DateStyle = 'ISO';SET extra_float_digits = 2;show
transaction_isolation" (one multi-statement Query) and a pg_type lookup; SQLTables
and SQLColumns are pg_catalog queries; statements run inside SAVEPOINTs.
"""

import datetime
import decimal
import os
import sys

import pyodbc

from probe_common import (
    LINEITEM_COLUMNS, LINEITEM_KINDS, NATIONS, ORDER1_MIN_SHIPDATE, ORDER1_SUM_QTY,
    TPCH_TABLES, Probe, expect_eq, expect_true, pg_settings,
)

SQL_NUMERIC, SQL_INTEGER, SQL_BIGINT, SQL_TYPE_DATE = 2, 4, -5, 91
# text is reported as one of these, depending on TextAsLongVarchar/UnknownsAsLongVarchar
# and on the ANSI/Unicode driver: VARCHAR, LONGVARCHAR, WVARCHAR, WLONGVARCHAR.
SQL_TEXT_TYPES = {12, -1, -9, -10}
EXPECTED_ODBC_TYPE = {"int8": {SQL_BIGINT}, "int4": {SQL_INTEGER}, "numeric": {SQL_NUMERIC},
                      "date": {SQL_TYPE_DATE}, "text": SQL_TEXT_TYPES}


def _escape(value):
    # ODBC connection-string values with ; { } or spaces go in braces, '}' doubled.
    if any(ch in value for ch in ";{} ="):
        return "{" + value.replace("}", "}}") + "}"
    return value


def connection_string():
    s = pg_settings()
    parts = [
        "DRIVER={%s}" % (os.environ.get("ODBC_DRIVER") or "PostgreSQL Unicode"),
        "SERVER=" + _escape(s["host"]),
        "PORT=%d" % s["port"],
        "DATABASE=" + _escape(s["dbname"]),
        "UID=" + _escape(s["user"]),
    ]
    if s["password"]:
        parts.append("PWD=" + _escape(s["password"]))
    extra = (os.environ.get("ODBC_EXTRA") or "").strip().strip(";")
    if extra:
        parts.append(extra)
    return ";".join(parts) + ";"


def connect():
    return pyodbc.connect(connection_string(), timeout=10)


def check_connect():
    conn = connect()
    try:
        cur = conn.cursor()
        cur.execute("SELECT 1")
        expect_eq([tuple(r) for r in cur.fetchall()], [(1,)], "SELECT 1")
        dbms = conn.getinfo(pyodbc.SQL_DBMS_NAME)
        expect_eq(dbms, "PostgreSQL", "SQL_DBMS_NAME")
        ver = conn.getinfo(pyodbc.SQL_DBMS_VER)
        expect_true(ver and int(ver.split(".")[0]) >= 10, "SQL_DBMS_VER should be >= 10, got %r" % ver)
    finally:
        conn.close()


def check_simple_query():
    conn = connect()
    try:
        cur = conn.cursor()
        cur.execute("SELECT n_nationkey, n_name FROM nation ORDER BY n_nationkey")
        expect_eq([tuple(r) for r in cur.fetchall()], list(enumerate(NATIONS)), "nation rows")
        cur.execute("SELECT sum(l_quantity), min(l_shipdate) FROM lineitem WHERE l_orderkey = 1")
        row = tuple(cur.fetchone())
        expect_eq(row, (ORDER1_SUM_QTY, ORDER1_MIN_SHIPDATE), "numeric/date values")
        expect_true(isinstance(row[0], decimal.Decimal), "sum should be Decimal, got %r" % type(row[0]))
        expect_true(type(row[1]) is datetime.date, "min should be date, got %r" % type(row[1]))
        conn.commit()
    finally:
        conn.close()


def check_tables():
    conn = connect()
    try:
        rows = conn.cursor().tables(schema="public").fetchall()
        tables = sorted(r.table_name for r in rows if r.table_type == "TABLE")
        expect_eq(tables, TPCH_TABLES, "SQLTables(schema=public) TABLE rows")
        expect_true(all(r.table_schem == "public" for r in rows), "rows outside schema public")
    finally:
        conn.close()


def check_columns():
    conn = connect()
    try:
        rows = conn.cursor().columns(table="lineitem").fetchall()
        expect_eq([r.column_name for r in rows], LINEITEM_COLUMNS, "SQLColumns(lineitem) names")
        for r in rows:
            want = EXPECTED_ODBC_TYPE[LINEITEM_KINDS[r.column_name]]
            expect_true(r.data_type in want, "%s: DATA_TYPE %r (%s) not in %r"
                        % (r.column_name, r.data_type, r.type_name, sorted(want)))
        qty = next(r for r in rows if r.column_name == "l_quantity")
        expect_eq((qty.column_size, qty.decimal_digits), (15, 2), "l_quantity size/digits")
    finally:
        conn.close()


def check_primary_keys():
    conn = connect()
    try:
        rows = conn.cursor().primaryKeys("nation", schema="public").fetchall()
        expect_true(len(rows) <= 1, "nation has at most a one-column key, got %r" % rows)
    finally:
        conn.close()


def check_parameters():
    conn = connect()
    try:
        cur = conn.cursor()
        for key in (7, 0, 24):
            cur.execute("SELECT n_name FROM nation WHERE n_nationkey = ?", key)
            expect_eq([tuple(r) for r in cur.fetchall()], [(NATIONS[key],)], "key %d" % key)
        cur.execute("SELECT n_nationkey FROM nation WHERE n_name = ?", "PERU")
        expect_eq(cur.fetchone()[0], 17, "str parameter")
        cur.execute("SELECT count(*) FROM lineitem WHERE l_orderkey = ? AND l_shipdate >= ?",
                    1, datetime.date(1996, 3, 1))
        expect_eq(cur.fetchone()[0], 4, "date parameter")
        conn.commit()
    finally:
        conn.close()


def check_error_recovery():
    conn = connect()
    try:
        cur = conn.cursor()
        try:
            cur.execute("SELECT * FROM no_such_table_flotilla_probe")
        except pyodbc.Error as e:
            state = e.args[0] if e.args else ""
            expect_eq(state, "42P01", "SQLSTATE (%s)" % (e.args[1:] or ("",))[0])
        else:
            raise AssertionError("query on a missing table did not raise")
        conn.rollback()
        cur = conn.cursor()
        cur.execute("SELECT r_name FROM region WHERE r_regionkey = ?", 2)
        expect_eq(cur.fetchone()[0], "ASIA", "query after rollback")
        conn.commit()
    finally:
        conn.close()


def main():
    extra = os.environ.get("ODBC_EXTRA") or ""
    probe = Probe("pyodbc %s, unixODBC, psqlODBC; extra: %r" % (pyodbc.version, extra))
    if not probe.check("connect, SELECT 1, SQL_DBMS_NAME/VER", check_connect):
        return probe.finish()
    probe.check("simple query, numeric and date values", check_simple_query)
    probe.check("SQLTables(schema=public) = 8 TPC-H tables", check_tables)
    probe.check("SQLColumns(lineitem) 16 columns and types", check_columns)
    probe.check("SQLPrimaryKeys(nation)", check_primary_keys)
    probe.check("parameterised queries (?)", check_parameters)
    probe.check("error 42P01 then rollback and recovery", check_error_recovery)
    return probe.finish()


if __name__ == "__main__":
    sys.exit(main())
