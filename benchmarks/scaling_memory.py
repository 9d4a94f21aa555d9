"""Scaling: one epoch of ``training.run`` over the training examples and over a copy many times larger, each
streamed from disk in a fresh process, with its peak memory and rate."""

import json
import sys
import tempfile

import tensorflow as tf

from fmnist_tf import data

from timing import timed_process

# One epoch of run(datasets=...) over blocks saved with Dataset.save, in a fresh process: the peak RSS of the run
# (Linux's high-water mark, reset once TensorFlow is imported: writing 5 to clear_refs) and the rate.
SCALING_RUN = """
import json, sys
import tensorflow as tf
from fmnist_tf import data, training


def rss_mb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024


train_dir, test_dir, buffer = sys.argv[1], sys.argv[2], int(sys.argv[3])
datasets = {"train": tf.data.Dataset.load(train_dir), "validation": tf.data.Dataset.load(test_dir),
            "test": tf.data.Dataset.load(test_dir)}
config = training.Config(epochs=1, export_dir="", shuffle_buffer=buffer, verbose=False)
before = rss_mb("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
figures = training.run(config, datasets=datasets)
print(json.dumps({"fit_seconds": figures["fit_seconds"], "rss_before_mb": before, "peak_rss_mb": rss_mb("VmHWM:")}))
"""


def bench_scaling(train, test, copies=10, shuffle_buffer=10_000):
    """One epoch over the ``train`` examples and over ``copies`` times as many examples, each saved on disk with
    ``Dataset.save`` (the 10x copies each with its pixels flipped left-right on odd copies, so they differ),
    at a fixed ``shuffle_buffer``, in fresh processes: peak RSS (MB) and examples/s of each, and what holding
    the larger one in memory would add (its uint8 pixels and int64 labels)."""
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        train.blocks.save(f"{tmp}/x1")
        test.blocks.save(f"{tmp}/test")

        def copy(i):
            return train.blocks.map(lambda x, y: (x if i % 2 == 0 else tf.reverse(x, [-1]), y))

        tf.data.Dataset.range(copies).flat_map(copy).save(f"{tmp}/x{copies}")
        for name, count in (("x1", train.count), (f"x{copies}", copies * train.count)):
            seconds, done = timed_process(
                [sys.executable, "-c", SCALING_RUN, f"{tmp}/{name}", f"{tmp}/test", str(shuffle_buffer)]
            )
            run = json.loads(done.stdout.strip().splitlines()[-1])
            figures[name] = {"examples": count, "rss_before_mb": run["rss_before_mb"], "peak_rss_mb": run["peak_rss_mb"],
                             "examples_per_s": count / run["fit_seconds"], "process_seconds": seconds}  # fmt: skip
    larger = figures[f"x{copies}"]
    return {
        "scaling": figures,
        "scaling_shuffle_buffer": shuffle_buffer,
        "scaling_added_rss_mb": larger["peak_rss_mb"] - figures["x1"]["peak_rss_mb"],
        "scaling_in_memory_would_add_mb": (copies - 1) * train.count * (data.NUM_PIXELS + 8) / 2**20,  # MiB, as RSS
    }
