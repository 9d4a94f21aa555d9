"""How every benchmark measures: the summary of repeated runs, fresh processes timed whole, call latencies."""

import statistics
import subprocess
import sys
import time

import numpy as np


def summary(values):
    """Median and range of repeated measurements."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": list(values)}


def python_last_line(code, *args):
    """Run ``code`` in a fresh Python process with ``args``; return the last line it printed.

    A fresh process starts TF with its own defaults, whatever this process configured; "" stands for None.
    """
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[-1]


def timed_process(command, **kwargs):
    """(wall seconds, CompletedProcess) of one fresh process; RuntimeError with its stderr's end if it fails."""
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    seconds = time.perf_counter() - began
    if done.returncode:
        raise RuntimeError(f"{command[:3]} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return seconds, done


def latencies_ms(fn, calls, warmup=20):
    """p50 and p99 in milliseconds of ``calls`` calls of ``fn``, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return np.percentile(times, 50), np.percentile(times, 99)
