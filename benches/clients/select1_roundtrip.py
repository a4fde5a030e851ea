"""SELECT 1 round trips through real drivers: psycopg 3 (Postgres wire) and ADBC
(Flight SQL), N times each after a warm-up; prints p50/p99/mean in milliseconds.

    FLOTILLA_VENV=~/.cache/flotilla/venv   # filled by tests/clients/setup.sh
    $FLOTILLA_VENV/bin/python benches/clients/select1_roundtrip.py \
        --pg 127.0.0.1:5432 --flight grpc://127.0.0.1:50051 [--user U --password P] [-n 1000]

Start a server first (`flotilla standalone`). Timings are reported, never asserted.
"""

import argparse
import json
import statistics
import time


def percentile(samples, q):
    ordered = sorted(samples)
    k = max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))
    return ordered[k]


def summary(name, samples):
    ms = [s * 1000 for s in samples]
    return {
        "client": name,
        "n": len(ms),
        "p50_ms": round(percentile(ms, 0.50), 3),
        "p99_ms": round(percentile(ms, 0.99), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
    }


def time_calls(call, n, warmup=50):
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


def bench_psycopg(addr, user, password, n):
    import psycopg

    host, port = addr.rsplit(":", 1)
    with psycopg.connect(host=host, port=int(port), user=user, password=password or None,
                         dbname="flotilla", autocommit=True) as conn:
        cur = conn.cursor()

        def call():
            cur.execute("SELECT 1")
            assert cur.fetchone()[0] == 1

        return time_calls(call, n)


def bench_adbc(uri, user, password, n):
    import adbc_driver_flightsql.dbapi as flightsql

    kwargs = {"username": user, "password": password} if password else {}
    with flightsql.connect(uri, db_kwargs=kwargs) as conn:
        cur = conn.cursor()

        def call():
            cur.execute("SELECT 1")
            assert cur.fetchone()[0] == 1

        samples = time_calls(call, n)
        cur.close()
        return samples


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pg", default="127.0.0.1:5432")
    parser.add_argument("--flight", default="grpc://127.0.0.1:50051")
    parser.add_argument("--user", default="flotilla")
    parser.add_argument("--password", default="")
    parser.add_argument("-n", type=int, default=1000)
    args = parser.parse_args()
    results = [
        summary("psycopg 3 (pgwire)", bench_psycopg(args.pg, args.user, args.password, args.n)),
        summary("ADBC (Flight SQL)", bench_adbc(args.flight, args.user, args.password, args.n)),
    ]
    for r in results:
        print(f"{r['client']}: SELECT 1 x{r['n']}: p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, mean {r['mean_ms']} ms")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
