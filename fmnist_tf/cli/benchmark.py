"""Measure the notebook's way against this package's on this machine, and print a table.

    python scripts/benchmark.py [--repeats=3] [--metrics_json=PATH]
"""

import os

from absl import flags

from fmnist_tf import configs
from fmnist_tf.cli import common

flags.DEFINE_integer("repeats", 3, "Repeats of each training measurement (median reported).", lower_bound=1)
flags.DEFINE_string("tfds_dir", None, "TFDS data dir (prepared here if needed); default TFDS's own.")
flags.DEFINE_string("metrics_json", None, "Write every figure to this JSON file.")
FLAGS = flags.FLAGS


def _seconds(s):
    return f"{s['median']:.2f} s ({s['min']:.2f}-{s['max']:.2f})"


@common.one_line_errors
def main(argv):
    from fmnist_tf import benchmark, data, distribute

    # The package's thread setting for the softmax model, before TF starts: the notebook's side runs in
    # this process too and gains from it as well, so the ratio is the conservative one.
    distribute.configure_threads(configs.MODEL_DEFAULTS["softmax"].threads)
    data.prepare_tfds(data.DEFAULT_RAW_DIR, FLAGS.tfds_dir)
    arrays = data.load_split_arrays(42, "tfds", tfds_dir=FLAGS.tfds_dir)
    figures = {"cpu_cores": os.cpu_count(), "repeats": FLAGS.repeats}
    train = benchmark.bench_training(arrays, FLAGS.repeats)
    trained = train.pop("model")
    figures.update(train)
    figures.update(benchmark.bench_notebook_default_threads(FLAGS.repeats, figures["package_fit_seconds"], FLAGS.tfds_dir))
    figures.update(benchmark.bench_serving(trained, arrays["test"][0]))
    figures.update(benchmark.bench_pipelines(FLAGS.tfds_dir, arrays))
    figures.update(benchmark.bench_baseline("tfds", FLAGS.tfds_dir))
    figures.update(benchmark.bench_cold_start(FLAGS.tfds_dir))

    f = figures
    rows = [
        ("training, 5 epochs at batch 32 (fit s)", _seconds(f["notebook_fit_seconds"]), _seconds(f["package_fit_seconds"]),
         f"{f['training_speedup']:.1f}x"),
        ("  notebook with TF's default threads", _seconds(f["notebook_default_threads_fit_seconds"]), "",
         f"{f['training_speedup_vs_notebook_default_threads']:.1f}x"),
        ("  validation accuracy", f"{f['val_accuracy_notebook']:.4f}", f"{f['val_accuracy_package']:.4f}", ""),
        ("serving batch 1, p50 / p99 (ms)", f"{f['predict_p50_ms_batch1']:.2f} / {f['predict_p99_ms_batch1']:.2f}",
         f"{f['serving_p50_ms_batch1']:.3f} / {f['serving_p99_ms_batch1']:.3f}",
         f"{f['predict_p50_ms_batch1'] / f['serving_p50_ms_batch1']:.0f}x"),
        ("serving batch 1024 (images/s)", f"{f['predict_images_per_s_batch1024']:,.0f}",
         f"{f['serving_images_per_s_batch1024']:,.0f}", ""),
        ("serving all 10,000 test (images/s)", f"{f['predict_images_per_s_all_test']:,.0f}",
         f"{f['serving_images_per_s_all_test']:,.0f}", ""),
        ("baseline 5-fold CV (s)", f"{f['baseline_notebook_seconds']:.1f}", f"{f['baseline_package_seconds']:.1f}",
         f"{f['baseline_speedup']:.1f}x"),
    ]  # fmt: skip
    print(f"\n{'measurement':<40}{'notebook / model.predict':>28}{'fmnist_tf':>24}{'ratio':>8}")
    for name, ours_before, ours, ratio in rows:
        print(f"{name:<40}{ours_before:>28}{ours:>24}{ratio:>8}")
    nb_cv, pk_cv = f["baseline_notebook_cv_scores"], f["baseline_package_cv_scores"]
    print(f"  CV scores notebook {[round(s, 4) for s in nb_cv]}\n  CV scores fmnist_tf {[round(s, 4) for s in pk_cv]}")
    print("\ninput pipelines (images/s):")
    for name, rate in f["pipeline_images_per_s"].items():
        print(f"  {name:<36}{rate:>14,.0f}")
    print(f"\ncold start to the first training step: {f['cold_start_seconds']:.1f} s (TFDS prepared)")
    print(f"TFDS one-time prepare of {data.TFDS_NAME}: {f['tfds_prepare_seconds']:.1f} s")
    print(f"machine: {f['cpu_cores']} CPU cores; training repeats: {f['repeats']}")
    if FLAGS.metrics_json:
        common.write_json(FLAGS.metrics_json, figures)


def run():
    common.run(main)


if __name__ == "__main__":
    run()
