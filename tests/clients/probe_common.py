"""Shared helpers for the Python client probes in tests/clients.

Each probe runs a list of named checks. A check is a function that raises on
failure (AssertionError from the helpers below, or whatever the client raised).
Output, one line per check:

    ok - <name>
    FAIL - <name>: <ExceptionType>: <message>

and a closing line `N passed, M failed`. The exit status is 0 only when no
check failed and at least one passed. A watchdog thread ends the probe (with
the closing line) if one check runs longer than PROBE_CHECK_TIMEOUT seconds
(default 120), so a server that stops answering cannot hang CI.
"""

import csv
import datetime
import decimal
import getpass
import os
import threading
import time

# TPC-H nation and region: fixed keys and names.
NATIONS = [
    "ALGERIA", "ARGENTINA", "BRAZIL", "CANADA", "EGYPT", "ETHIOPIA", "FRANCE",
    "GERMANY", "INDIA", "INDONESIA", "IRAN", "IRAQ", "JAPAN", "JORDAN", "KENYA",
    "MOROCCO", "MOZAMBIQUE", "PERU", "CHINA", "ROMANIA", "SAUDI ARABIA",
    "VIETNAM", "RUSSIA", "UNITED KINGDOM", "UNITED STATES",
]
NATION_REGION = [0, 1, 1, 1, 4, 0, 3, 3, 2, 2, 4, 4, 2, 4, 0, 0, 0, 1, 2, 3, 4, 2, 3, 3, 1]
REGIONS = ["AFRICA", "AMERICA", "ASIA", "EUROPE", "MIDDLE EAST"]
TPCH_TABLES = ["customer", "lineitem", "nation", "orders", "part", "partsupp", "region", "supplier"]
LINEITEM_COLUMNS = [
    "l_orderkey", "l_partkey", "l_suppkey", "l_linenumber", "l_quantity",
    "l_extendedprice", "l_discount", "l_tax", "l_returnflag", "l_linestatus",
    "l_shipdate", "l_commitdate", "l_receiptdate", "l_shipinstruct",
    "l_shipmode", "l_comment",
]
# Column -> kind, per the Flotilla contract (keys int8 except l_linenumber int4,
# money/quantity numeric(15,2), dates date, strings text).
LINEITEM_KINDS = {
    "l_orderkey": "int8", "l_partkey": "int8", "l_suppkey": "int8",
    "l_linenumber": "int4", "l_quantity": "numeric", "l_extendedprice": "numeric",
    "l_discount": "numeric", "l_tax": "numeric", "l_returnflag": "text",
    "l_linestatus": "text", "l_shipdate": "date", "l_commitdate": "date",
    "l_receiptdate": "date", "l_shipinstruct": "text", "l_shipmode": "text",
    "l_comment": "text",
}

# Facts about lineitem rows of order 1 (TPC-H SF0.1 as made by tpchgen 4.0.0):
# six lines, sum(l_quantity) = 145.00, min(l_shipdate) = 1996-01-29.
ORDER1_LINES = 6
ORDER1_SUM_QTY = decimal.Decimal("145.00")
ORDER1_MIN_SHIPDATE = datetime.date(1996, 1, 29)
# First line of order 1: (l_orderkey, l_linenumber, l_quantity, l_extendedprice, l_shipdate, l_returnflag)
ORDER1_LINE1 = (1, 1, decimal.Decimal("17.00"), decimal.Decimal("24386.67"),
                datetime.date(1996, 3, 13), "N")


def pg_settings():
    """Connection settings from the libpq environment variables."""
    password = os.environ.get("PGPASSWORD") or None
    return {
        "host": os.environ.get("PGHOST") or "127.0.0.1",
        "port": int(os.environ.get("PGPORT") or "5432"),
        "user": os.environ.get("PGUSER") or getpass.getuser(),
        "password": password,
        "dbname": os.environ.get("PGDATABASE") or "flotilla",
    }


def tpch_dir():
    return os.environ.get("TPCH_DIR") or "/work/shared/tpch"


def tpch_query(n):
    with open(os.path.join(tpch_dir(), "queries", "q%02d.sql" % n)) as f:
        return f.read().strip().rstrip(";")


def tpch_answer(n, sf="sf0.1"):
    """(header, rows) of answers/<sf>/qNN.csv; cells are strings, NULL -> None."""
    with open(os.path.join(tpch_dir(), "answers", sf, "q%02d.csv" % n), newline="") as f:
        rows = list(csv.reader(f, delimiter="|"))
    header, body = rows[0], rows[1:]
    body = [[None if c == "NULL" else c for c in r] for r in body]
    return header, body


def fail(msg):
    raise AssertionError(msg)


def expect_eq(actual, expected, what="value"):
    if actual != expected:
        fail("%s: expected %r, got %r" % (what, expected, actual))


def expect_true(cond, msg):
    if not cond:
        fail(msg)


def to_decimal(v):
    if isinstance(v, decimal.Decimal):
        return v
    if isinstance(v, float):  # includes numpy.float64
        return decimal.Decimal(repr(float(v)))
    return decimal.Decimal(str(v))


def close_enough(actual, expected, rel=decimal.Decimal("1e-6")):
    """Relative comparison of two numbers given as Decimal/int/float/str."""
    a, e = to_decimal(actual), to_decimal(expected)
    if e == 0:
        return abs(a) <= rel
    return abs(a - e) <= abs(e) * rel


def expect_close(actual, expected, what="value", rel="1e-6"):
    try:
        ok = close_enough(actual, expected, decimal.Decimal(rel))
    except (decimal.InvalidOperation, TypeError, ValueError) as e:
        fail("%s: %r is not a number comparable to %r (%s)" % (what, actual, expected, e))
    if not ok:
        fail("%s: expected %s (rel tol %s), got %r" % (what, expected, rel, actual))


def _is_number(s):
    try:
        decimal.Decimal(s)
        return True
    except (decimal.InvalidOperation, TypeError, ValueError):
        return False


def cell_text(v):
    if isinstance(v, (datetime.date, datetime.datetime)):
        return v.isoformat()
    return str(v)


def compare_to_answer(rows, header, answer_rows, columns=None):
    """Compare result rows (sequences) to an answer file's rows.

    Numbers (as judged by the answer cell) with a relative tolerance of 1e-6,
    everything else as exact text. `columns`, when given, must equal the header.
    """
    if columns is not None:
        expect_eq([c.lower() for c in columns], header, "column names")
    expect_eq(len(rows), len(answer_rows), "row count")
    for i, (got, want) in enumerate(zip(rows, answer_rows)):
        expect_eq(len(got), len(want), "row %d width" % i)
        for j, (g, w) in enumerate(zip(got, want)):
            where = "row %d column %s" % (i, header[j])
            if w is None:
                expect_true(g is None, "%s: expected NULL, got %r" % (where, g))
            elif _is_number(w) and not isinstance(g, str):
                expect_close(g, w, where)
            else:
                expect_eq(cell_text(g), w, where)


def _one_line(text):
    return " | ".join(part.strip() for part in str(text).splitlines() if part.strip())


class Probe:
    def __init__(self, title):
        self.title = title
        self.passed = 0
        self.failed = 0
        self.timeout = float(os.environ.get("PROBE_CHECK_TIMEOUT") or "120")
        self._lock = threading.Lock()
        self._current = None
        self._deadline = None
        print("# %s" % title, flush=True)
        threading.Thread(target=self._watchdog, daemon=True).start()

    def _watchdog(self):
        while True:
            time.sleep(0.5)
            with self._lock:
                if self._deadline is not None and time.monotonic() > self._deadline:
                    print("FAIL - %s: timed out after %.0fs (PROBE_CHECK_TIMEOUT)"
                          % (self._current, self.timeout), flush=True)
                    print("%d passed, %d failed" % (self.passed, self.failed + 1), flush=True)
                    os._exit(1)

    def note(self, text):
        print("# " + _one_line(text), flush=True)

    def check(self, name, fn, *args, **kwargs):
        """Run one check; returns True when it passed."""
        with self._lock:
            self._current = name
            self._deadline = time.monotonic() + self.timeout
        try:
            fn(*args, **kwargs)
            ok, reason = True, None
        except Exception as e:  # noqa: BLE001 - every failure is reported
            ok, reason = False, "%s: %s" % (type(e).__name__, _one_line(e) or repr(e))
        with self._lock:
            self._deadline = None
            if ok:
                self.passed += 1
                print("ok - %s" % name, flush=True)
            else:
                self.failed += 1
                print("FAIL - %s: %s" % (name, reason), flush=True)
        return ok

    def finish(self):
        with self._lock:
            self._deadline = None
            print("%d passed, %d failed" % (self.passed, self.failed), flush=True)
            return 0 if (self.failed == 0 and self.passed > 0) else 1

