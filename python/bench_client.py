#!/usr/bin/env python3
"""Two figures of the Python client against a running node: `python3 bench_client.py URL`.

1. A tiny job's round trip: a 2x2 matmul from submit to the numpy result
   (POST, the event stream until it finishes, GET the result), median over
   --runs runs after one warm-up (the first job pays for connections and
   the workers' first kernel).
2. Upload rate: a 256 MiB float32 array through `Mesh.submit`, timed from
   the start of the request to the node's 202. That includes the node
   reading, parsing and checking the whole body (it answers only then);
   the time at which the client finished sending is printed too, so the
   two halves can be told apart. Each job (reduce sum along axis 0, so
   the answer is small) is waited for before the next upload starts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any, Iterator, List

import numpy as np

import tensormesh.arrays
from tensormesh import Mesh

MIB = 1024 * 1024


def tiny_jobs(mesh: Mesh, runs: int) -> List[float]:
    a = np.array([[1, 2], [3, 4]], np.float32)
    mesh.matmul(a, a, timeout=60)  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        c = mesh.matmul(a, a, timeout=60)
        times.append(time.perf_counter() - t0)
        assert np.array_equal(c, a @ a)
    return times


def uploads(mesh: Mesh, count: int, mib: int) -> List[tuple]:
    x = np.random.default_rng(0).random((mib * MIB // 4096, 1024), dtype=np.float32)
    sent_at: List[float] = []
    original = tensormesh.arrays.MultipartBody.__iter__

    def timed(self: Any) -> Iterator[Any]:
        yield from original(self)
        sent_at.append(time.perf_counter())

    tensormesh.arrays.MultipartBody.__iter__ = timed  # type: ignore[method-assign]
    out = []
    try:
        for _ in range(count):
            sent_at.clear()
            t0 = time.perf_counter()
            job = mesh.submit("reduce", {"x": x}, {"op": "sum", "axis": 0})
            t1 = time.perf_counter()
            out.append((t1 - t0, (sent_at[-1] - t0) if sent_at else float("nan")))
            job.wait(timeout=300)
    finally:
        tensormesh.arrays.MultipartBody.__iter__ = original  # type: ignore[method-assign]
    return out


def main(argv: List[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("api", help="a node's API URL, e.g. http://127.0.0.1:7070")
    ap.add_argument("--runs", type=int, default=10, help="tiny jobs to time (default 10)")
    ap.add_argument("--uploads", type=int, default=3, help="256 MiB uploads to time (default 3)")
    ap.add_argument("--mib", type=int, default=256, help="upload size in MiB (default 256)")
    args = ap.parse_args(argv)
    with Mesh(args.api) as mesh:
        times = tiny_jobs(mesh, args.runs)
        print(f"tiny job (2x2 matmul), submit to result: median {statistics.median(times) * 1e3:.1f} ms over {len(times)} runs "
              f"(min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f})")
        size = args.mib * MIB
        results = uploads(mesh, args.uploads, args.mib)
        rates = [size / total / 1e6 for total, _ in results]
        for i, (total, sent) in enumerate(results):
            print(f"  upload {i + 1}: {size / total / 1e6:.0f} MB/s, 202 after {total:.2f} s (client done sending at {sent:.2f} s)")
        print(f"upload of {args.mib} MiB float32 through submit, request start to 202: median {statistics.median(rates):.0f} MB/s "
              f"({statistics.median(rates) * 1e6 / MIB:.0f} MiB/s) over {len(rates)} uploads")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
