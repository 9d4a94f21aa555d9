"""The benchmarks (``benchmarks/``, a checkout's, not installed; pytest puts the folder on sys.path as
``python benchmarks/run.py`` does): their measurements run on small real data and give sane figures."""

import pytest

from fmnist_tf import data

import scaling_memory


@pytest.mark.slow
def test_the_scaling_row_streams_a_larger_copy_in_bounded_memory():
    test = data.load_examples("test", "idx")
    small = data.as_examples(test.blocks.take(3), "three blocks")
    figures = scaling_memory.bench_scaling(small, small, copies=4, shuffle_buffer=1_000)
    rows = figures["scaling"]
    assert rows["x1"]["examples"] == 3_000 and rows["x4"]["examples"] == 12_000
    assert all(row["examples_per_s"] > 0 and row["peak_rss_mb"] > row["rss_before_mb"] > 100 for row in rows.values())
    assert figures["scaling_added_rss_mb"] < 50 and figures["scaling_in_memory_would_add_mb"] > 6
