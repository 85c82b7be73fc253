"""common.py - what every bench/<area>.py shares: a clock, medians, the row format.

A Python peer of bench/<area>.c runs the SAME workloads with Python's
multiprocessing and prints one line per workload on stdout, nothing else:
    <workload-id> TAB <value> TAB <unit> TAB <higher|lower>
with the same ids as the C program; bench/run.sh pairs the two. Progress and
diagnostics go to stderr.

    import sys, os
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from common import now, per_op_ns, median_of, reps, selected, row, HIGHER, LOWER

    def one_rep():
        n = 100000
        t0 = now()
        for _ in range(n):
            work()
        return per_op_ns(t0, n)

    if __name__ == "__main__":          # required: spawn/forkserver re-import
        if selected("lock_uncontended"):
            row("lock_uncontended", median_of(reps(5), one_rep), "ns", LOWER)

Environment: BENCH_REPS overrides every repetition count. Command-line
arguments, if any, select workloads by substring of their id.
"""
import math
import os
import statistics
import sys
import time

HIGHER = True   # throughput: items/s, MB/s, ops/s
LOWER = False   # latency: ns, us, ms, s


def now():
    """Monotonic clock in seconds (perf_counter: the finest one)."""
    return time.perf_counter()


def per_op_ns(t0, n):
    """Nanoseconds per operation since t0 (from now()) for n operations."""
    return (now() - t0) * 1e9 / n if n > 0 else math.nan


def rate(t0, n):
    """Operations per second since t0 for n operations."""
    dt = now() - t0
    return n / dt if dt > 0 else math.nan


def reps(default):
    """Repetition count: BENCH_REPS if set (>= 1), else default."""
    try:
        n = int(os.environ.get("BENCH_REPS", "0"))
    except ValueError:
        n = 0
    return n if n >= 1 else default


def median(values):
    """Median ignoring NaN/None (failed repetitions); NaN if none is left."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(vals) if vals else math.nan


def median_of(n, rep, *args):
    """Runs rep(*args) n times and returns the median of what it returned."""
    return median([rep(*args) for _ in range(n)])


def selected(workload_id, argv=None):
    """True when no arguments were given or one is a substring of the id."""
    args = sys.argv[1:] if argv is None else argv
    return not args or any(a in workload_id for a in args)


def row(workload_id, value, unit, higher, peer=None):
    """Prints one result row (the contract with bench/run.sh) and flushes;
    a contender's rows carry its name in a fifth field."""
    v = "nan" if value is None or math.isnan(value) else "%.6g" % value
    print("%s\t%s\t%s\t%s%s" % (workload_id, v, unit, "higher" if higher else "lower",
                                 "\t" + peer if peer else ""), flush=True)


def log(*a):
    """Progress / diagnostics: stderr, never stdout."""
    print(*a, file=sys.stderr, flush=True)
