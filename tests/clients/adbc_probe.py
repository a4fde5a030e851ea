#!/usr/bin/env python3
"""Probe: ADBC Flight SQL driver (adbc-driver-flightsql, DB-API via adbc_driver_manager).

Environment: FLIGHT_URI (default grpc://127.0.0.1:50051), FLIGHT_USER and
FLIGHT_PASSWORD (empty user = connect without credentials; the wrong-password
check then is skipped), FLIGHT_CATALOG (default flotilla), TPCH_DIR.

What the driver sends (see shared/docs/clients.md section 5): Handshake with
"authorization: Basic ..." expecting an "authorization: Bearer ..." response
header, GetSqlInfo, and for every execute CreatePreparedStatement ->
(DoPut parameters) -> GetFlightInfo -> DoGet; GetCatalogs/GetDbSchemas/GetTables
(include_schema) for get_objects and get_table_schema; GetTableTypes.
"""

import os
import sys
import warnings

import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi as flight_dbapi
import adbc_driver_manager
import polars
import pyarrow

from probe_common import (
    LINEITEM_COLUMNS, LINEITEM_KINDS, NATIONS, REGIONS, TPCH_TABLES, Probe,
    compare_to_answer, expect_eq, expect_true, tpch_answer, tpch_query,
)

RPC_TIMEOUT_SECONDS = "60"

# The DB-API layer tries to turn autocommit off and warns when the server has no
# transactions (Flight SQL servers usually have none); that is expected here.
warnings.filterwarnings("ignore", message="Cannot disable autocommit")


def flight_uri():
    return os.environ.get("FLIGHT_URI") or "grpc://127.0.0.1:50051"


def catalog_name():
    return os.environ.get("FLIGHT_CATALOG") or "flotilla"


def connect(user=None, password=None):
    """Connect with FLIGHT_USER/FLIGHT_PASSWORD unless given explicitly."""
    if user is None:
        user = os.environ.get("FLIGHT_USER") or ""
        password = os.environ.get("FLIGHT_PASSWORD") or ""
    db_kwargs = {
        adbc_driver_flightsql.DatabaseOptions.TIMEOUT_QUERY.value: RPC_TIMEOUT_SECONDS,
        adbc_driver_flightsql.DatabaseOptions.TIMEOUT_FETCH.value: RPC_TIMEOUT_SECONDS,
    }
    if user:
        db_kwargs[adbc_driver_manager.DatabaseOptions.USERNAME.value] = user
        db_kwargs[adbc_driver_manager.DatabaseOptions.PASSWORD.value] = password or ""
    return flight_dbapi.connect(flight_uri(), db_kwargs=db_kwargs)


def is_string_type(t):
    return (pyarrow.types.is_string(t) or pyarrow.types.is_large_string(t)
            or (hasattr(pyarrow.types, "is_string_view") and pyarrow.types.is_string_view(t)))


def expect_arrow_kind(field):
    kind = LINEITEM_KINDS[field.name]
    t = field.type
    if kind == "int8":
        ok = t == pyarrow.int64()
    elif kind == "int4":
        ok = t == pyarrow.int32()
    elif kind == "numeric":
        ok = t == pyarrow.decimal128(15, 2)
    elif kind == "date":
        ok = t == pyarrow.date32()
    else:
        ok = is_string_type(t)
    expect_true(ok, "%s: arrow type %s does not fit %s" % (field.name, t, kind))


def check_connect(conn):
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        expect_eq(cur.fetchone(), (1,), "SELECT 1")
        expect_eq(cur.fetchone(), None, "end of result")


def check_get_info(conn):
    info = conn.adbc_get_info()
    vendor = info.get("vendor_name")
    expect_true(isinstance(vendor, str) and vendor.strip() != "",
                "vendor_name missing or empty in %r" % (info,))
    expect_true(info.get("driver_name"), "driver_name missing in %r" % (info,))


def _objects(conn):
    return conn.adbc_get_objects(depth="all").read_all().to_pylist()


def _public_tables(objects):
    cats = [c for c in objects if c["catalog_name"] == catalog_name()]
    expect_eq(len(cats), 1, "catalogs named %r among %r"
              % (catalog_name(), [c["catalog_name"] for c in objects]))
    schemas = [s for s in (cats[0]["catalog_db_schemas"] or []) if s["db_schema_name"] == "public"]
    expect_eq(len(schemas), 1, "schemas named public in catalog %s" % catalog_name())
    return {t["table_name"]: t for t in (schemas[0]["db_schema_tables"] or [])}


def check_get_objects(conn):
    tables = _public_tables(_objects(conn))
    expect_eq(sorted(tables), TPCH_TABLES, "tables in %s.public" % catalog_name())
    cols = tables["lineitem"]["table_columns"] or []
    ordered = sorted(cols, key=lambda c: c["ordinal_position"] or 0)
    expect_eq([c["column_name"] for c in ordered], LINEITEM_COLUMNS, "lineitem columns")
    expect_eq([c["ordinal_position"] for c in ordered], list(range(1, 17)), "ordinal positions")


def check_get_objects_filtered(conn):
    objs = conn.adbc_get_objects(depth="tables", catalog_filter=catalog_name(),
                                 db_schema_filter="public", table_name_filter="nation"
                                 ).read_all().to_pylist()
    tables = _public_tables(objs)
    expect_eq(sorted(tables), ["nation"], "tables matching 'nation'")
    objs = conn.adbc_get_objects(depth="db_schemas").read_all().to_pylist()
    names = {(c["catalog_name"], s["db_schema_name"])
             for c in objs for s in (c["catalog_db_schemas"] or [])}
    expect_true((catalog_name(), "public") in names, "db_schemas %r lack %s.public"
                % (sorted(names), catalog_name()))


def check_table_schema(conn):
    schema = conn.adbc_get_table_schema("lineitem")
    expect_eq(schema.names, LINEITEM_COLUMNS, "field names")
    for field in schema:
        expect_arrow_kind(field)
    schema2 = conn.adbc_get_table_schema("nation", catalog_filter=catalog_name(),
                                         db_schema_filter="public")
    expect_eq(schema2.names, ["n_nationkey", "n_name", "n_regionkey", "n_comment"], "nation fields")


def check_table_types(conn):
    types = conn.adbc_get_table_types()
    expect_true(isinstance(types, list) and types and all(isinstance(t, str) for t in types),
                "table types should be a non-empty list of strings, got %r" % (types,))
    used = {t["table_type"] for t in _public_tables(_objects(conn)).values()}
    expect_true(used <= set(types), "table types used by get_objects %r not all in %r"
                % (sorted(used), types))


def check_parameters(conn):
    with conn.cursor() as cur:
        cur.execute("SELECT n_name FROM nation WHERE n_nationkey = ?", (7,))
        expect_eq(cur.fetchall(), [("GERMANY",)], "int parameter 7")
        cur.execute("SELECT n_name FROM nation WHERE n_nationkey = ?", (24,))
        expect_eq(cur.fetchall(), [("UNITED STATES",)], "same statement, parameter 24")
        cur.execute("SELECT n_nationkey, n_regionkey FROM nation WHERE n_name = ?", ("FRANCE",))
        expect_eq(cur.fetchall(), [(6, 3)], "str parameter")
        cur.execute("SELECT r_name FROM region WHERE r_regionkey >= ? AND r_regionkey < ? "
                    "ORDER BY r_regionkey", (1, 3))
        expect_eq(cur.fetchall(), [(REGIONS[1],), (REGIONS[2],)], "two parameters")


def check_q06_arrow(conn):
    header, answer = tpch_answer(6)
    with conn.cursor() as cur:
        cur.execute(tpch_query(6))
        table = cur.fetch_arrow_table()
    expect_true(isinstance(table, pyarrow.Table), "not a pyarrow.Table: %r" % type(table))
    expect_true(pyarrow.types.is_decimal(table.schema.field(0).type),
                "revenue should be a decimal, got %s" % table.schema.field(0).type)
    rows = [tuple(r.values()) for r in table.to_pylist()]
    compare_to_answer(rows, header, answer, table.column_names)


def check_q01_arrow(conn):
    header, answer = tpch_answer(1)
    with conn.cursor() as cur:
        cur.execute(tpch_query(1))
        table = cur.fetch_arrow_table()
    rows = [tuple(r.values()) for r in table.to_pylist()]
    compare_to_answer(rows, header, answer, table.column_names)


def check_polars(conn):
    with conn.cursor() as cur:
        cur.execute("SELECT n_nationkey, n_name, n_regionkey FROM nation ORDER BY n_nationkey")
        df = polars.from_arrow(cur.fetch_arrow_table())
    expect_eq(df.shape, (25, 3), "shape")
    expect_eq(df.columns, ["n_nationkey", "n_name", "n_regionkey"], "columns")
    expect_eq(df.schema["n_nationkey"], polars.Int64, "n_nationkey dtype")
    expect_eq(df["n_name"].to_list(), NATIONS, "n_name values")
    expect_eq(df.filter(polars.col("n_regionkey") == 3)["n_name"].to_list(),
              ["FRANCE", "GERMANY", "ROMANIA", "RUSSIA", "UNITED KINGDOM"], "EUROPE nations")


def check_error_recovery(conn):
    with conn.cursor() as cur:
        try:
            cur.execute("SELECT * FROM no_such_table_flotilla_probe")
            cur.fetchall()
        except flight_dbapi.Error:
            pass
        else:
            raise AssertionError("query on a missing table did not raise")
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM region")
        expect_eq(cur.fetchone(), (5,), "query after the error")


def check_wrong_password():
    user = os.environ.get("FLIGHT_USER") or ""
    bad = (os.environ.get("FLIGHT_PASSWORD") or "") + "-wrong"
    try:
        conn = connect(user, bad)
    except flight_dbapi.Error:
        return
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetchall()
    except flight_dbapi.Error:
        return
    finally:
        try:
            conn.close()
        except flight_dbapi.Error:
            pass
    raise AssertionError("connecting and querying with a wrong password succeeded")


def main():
    probe = Probe("adbc-driver-flightsql %s, pyarrow %s, polars %s; %s"
                  % (adbc_driver_flightsql.__version__, pyarrow.__version__,
                     polars.__version__, flight_uri()))
    holder = {}

    def do_connect():
        holder["conn"] = connect()
        check_connect(holder["conn"])

    if not probe.check("connect (handshake) and SELECT 1", do_connect):
        return probe.finish()
    conn = holder["conn"]
    probe.check("adbc_get_info vendor_name", check_get_info, conn)
    probe.check("adbc_get_objects lists %s.public tables and columns" % catalog_name(),
                check_get_objects, conn)
    probe.check("adbc_get_objects with filters and depths", check_get_objects_filtered, conn)
    probe.check("adbc_get_table_schema('lineitem') arrow types", check_table_schema, conn)
    probe.check("adbc_get_table_types", check_table_types, conn)
    probe.check("parameterised queries (?)", check_parameters, conn)
    probe.check("fetch_arrow_table TPC-H q06 equals the answer", check_q06_arrow, conn)
    probe.check("fetch_arrow_table TPC-H q01 equals the answer", check_q01_arrow, conn)
    probe.check("polars.from_arrow", check_polars, conn)
    probe.check("error then recovery", check_error_recovery, conn)
    if os.environ.get("FLIGHT_USER"):
        probe.check("wrong password is refused", check_wrong_password)
    else:
        probe.note("skipped: wrong password is refused (FLIGHT_USER is not set)")
    probe.check("close", conn.close)
    return probe.finish()


if __name__ == "__main__":
    sys.exit(main())
