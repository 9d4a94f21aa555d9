"""Measure the notebook's way against this package's on this machine, and print a table.

    python benchmarks/run.py [--repeats=3] [--process_repeats=5] [--parts=process,training,...] [--metrics_json=PATH]

``--parts=process`` alone gives the rows a user feels (whole processes, the first fit in each).
Run from a checkout: the benchmarks are not installed with the package.
"""

import os

from absl import flags

from fmnist_tf import configs
from fmnist_tf.cli import common

PARTS = ("process", "first_run", "training", "scaling", "serving", "pipelines", "baseline", "cold_start")
flags.DEFINE_integer("repeats", 3, "Repeats of each in-process training measurement (median reported).", lower_bound=1)
flags.DEFINE_integer(
    "process_repeats", 5, "Fresh processes of each side for the whole-process rows (interleaved).", lower_bound=1
)
flags.DEFINE_list("parts", list(PARTS), f"Which measurements to run, comma-separated: any of {', '.join(PARTS)}.")
flags.register_validator("parts", lambda parts: set(parts) <= set(PARTS), f"--parts takes names from {', '.join(PARTS)}")
common.define_tfds_dir_flag()
common.define_metrics_json_flag()
FLAGS = flags.FLAGS


def _seconds(s):
    return f"{s['median']:.2f} s ({s['min']:.2f}-{s['max']:.2f})"


def _measure(parts):
    """Run the selected measurements; return every figure."""
    # Imported here, with TensorFlow, once the flags have answered.
    import baseline_cv
    import fresh_processes
    import input_pipelines
    import scaling_memory
    import serving_latency
    import warm_fit
    from fmnist_tf import data
    from fmnist_tf.training import distribute

    figures = {"cpu_cores": os.cpu_count(), "load_average_at_start": os.getloadavg()[0]}
    common.prepare_data("tfds", data.DEFAULT_RAW_DIR, FLAGS.tfds_dir)
    # Fresh processes first, while this process is still idle.
    if "process" in parts:
        figures["process_repeats"] = FLAGS.process_repeats
        figures.update(fresh_processes.bench_whole_process(FLAGS.process_repeats, FLAGS.tfds_dir))
    if "first_run" in parts:
        figures.update(fresh_processes.bench_first_run(1))
    if "scaling" in parts:
        figures.update(scaling_memory.bench_scaling(data.load_examples("train", tfds_dir=FLAGS.tfds_dir),
                                                    data.load_examples("test", tfds_dir=FLAGS.tfds_dir)))  # fmt: skip
    if not parts & {"training", "serving", "pipelines", "baseline", "cold_start"}:
        return figures
    # The package's thread setting for the softmax model, before TF's runtime starts: the notebook's in-process
    # side runs in this process too and gains from it as well, so the warm ratio is the conservative one.
    distribute.configure_threads(configs.MODEL_DEFAULTS["softmax"].threads)
    splits = data.load_splits(42, "tfds", tfds_dir=FLAGS.tfds_dir)
    if parts & {"training", "serving"}:
        figures["repeats"] = FLAGS.repeats
        train = warm_fit.bench_training(splits, FLAGS.repeats)
        trained = train.pop("model")
        figures.update(train)
    if "training" in parts:
        figures.update(
            warm_fit.bench_notebook_default_threads(FLAGS.repeats, figures["package_fit_seconds"], FLAGS.tfds_dir)
        )
    if "serving" in parts:
        train_images, test_images = (data.to_numpy(splits[name])[0] for name in ("train", "test"))
        figures.update(serving_latency.bench_serving(trained, test_images))
        with common.lite_output_held_back():
            figures.update(serving_latency.bench_lite(trained, train_images, test_images))
    if "pipelines" in parts:
        figures.update(input_pipelines.bench_pipelines(FLAGS.tfds_dir, splits))
    if "baseline" in parts:
        figures.update(baseline_cv.bench_baseline("tfds", FLAGS.tfds_dir))
    if "cold_start" in parts:
        figures.update(fresh_processes.bench_cold_start(FLAGS.tfds_dir))
    return figures


def _rows(f):
    """(measurement, notebook side, package side, ratio) for the figures present in ``f``."""
    rows = []
    if "whole_process_speedup" in f:
        rows += [
            ("whole process: train.py --epochs=5 (s)", _seconds(f["whole_process_seconds_notebook"]),
             _seconds(f["whole_process_seconds_package"]), f"{f['whole_process_speedup']:.1f}x"),
            ("  first fit in that fresh process (s)", _seconds(f["cold_fit_seconds_notebook"]),
             _seconds(f["cold_fit_seconds_package"]), f"{f['cold_fit_speedup']:.1f}x"),
            ("  validation accuracy (median)", f"{f['whole_process_val_accuracy_notebook']['median']:.4f}",
             f"{f['whole_process_val_accuracy_package']['median']:.4f}", ""),
        ]
    if "training_speedup" in f:
        rows += [
            ("training, warm process (fit s)", _seconds(f["notebook_fit_seconds"]), _seconds(f["package_fit_seconds"]),
             f"{f['training_speedup']:.1f}x"),
            ("  validation accuracy", f"{f['val_accuracy_notebook']:.4f}", f"{f['val_accuracy_package']:.4f}", ""),
        ]
    if "training_speedup_vs_notebook_default_threads" in f:
        rows.append(("  notebook fit, TF's default threads", _seconds(f["notebook_default_threads_fit_seconds"]), "",
                     f"{f['training_speedup_vs_notebook_default_threads']:.1f}x"))
    if "serving_p50_ms_batch1" in f:
        rows += [
            ("serving batch 1, p50 / p99 (ms)", f"{f['predict_p50_ms_batch1']:.2f} / {f['predict_p99_ms_batch1']:.2f}",
             f"{f['serving_p50_ms_batch1']:.3f} / {f['serving_p99_ms_batch1']:.3f}",
             f"{f['predict_p50_ms_batch1'] / f['serving_p50_ms_batch1']:.0f}x"),
            *((f"  LiteRT {kind}, p50 / p99 (ms)", "",
               f"{f[f'lite_{kind}_p50_ms_batch1']:.3f} / {f[f'lite_{kind}_p99_ms_batch1']:.3f}", "")
              for kind in ("float32", "int8") if f"lite_{kind}_p50_ms_batch1" in f),
            ("serving batch 1024 (images/s)", f"{f['predict_images_per_s_batch1024']:,.0f}",
             f"{f['serving_images_per_s_batch1024']:,.0f}", ""),
            ("serving all 10,000 test (images/s)", f"{f['predict_images_per_s_all_test']:,.0f}",
             f"{f['serving_images_per_s_all_test']:,.0f}", ""),
        ]
    if "baseline_speedup" in f:
        rows.append(("baseline 5-fold CV (s)", f"{f['baseline_notebook_seconds']:.1f}",
                     f"{f['baseline_package_seconds']:.1f}", f"{f['baseline_speedup']:.1f}x"))
    return rows  # fmt: skip


@common.one_line_errors
def main(argv):
    from fmnist_tf import data

    f = _measure(set(FLAGS.parts))
    rows = _rows(f)
    if rows:
        print(f"\n{'measurement':<42}{'notebook / model.predict':>28}{'fmnist_tf':>24}{'ratio':>8}")
        for name, theirs, ours, ratio in rows:
            print(f"{name:<42}{theirs:>28}{ours:>24}{ratio:>8}")
    if "baseline_notebook_cv_scores" in f:
        nb_cv, pk_cv = f["baseline_notebook_cv_scores"], f["baseline_package_cv_scores"]
        print(f"  CV scores notebook {[round(s, 4) for s in nb_cv]}\n  CV scores fmnist_tf {[round(s, 4) for s in pk_cv]}")
    if "pipeline_images_per_s" in f:
        print("\ninput pipelines (images/s):")
        for name, rate in f["pipeline_images_per_s"].items():
            print(f"  {name:<36}{rate:>14,.0f}")
    if "scaling" in f:
        print(f"\none epoch streamed from disk at shuffle_buffer={f['scaling_shuffle_buffer']:,} (fresh processes):")
        for name, row in f["scaling"].items():
            print(f"  {name:<4}{row['examples']:>9,} examples  peak RSS {row['peak_rss_mb']:>7,.0f} MB"
                  f"  {row['examples_per_s']:>10,.0f} examples/s")  # fmt: skip
        print(f"  10x adds {f['scaling_added_rss_mb']:,.0f} MB of peak RSS; held in memory it would add "
              f"{f['scaling_in_memory_would_add_mb']:,.0f} MB")  # fmt: skip
    if "first_run_seconds" in f:
        print(f"\nfirst run on a fresh machine (empty HOME: TFDS prepare, train, export): {_seconds(f['first_run_seconds'])}")
    if "cold_start_seconds" in f:
        print(f"\ncold start to the first training step: {f['cold_start_seconds']:.1f} s (TFDS prepared)")
        print(f"TFDS one-time prepare of {data.TFDS_NAME}: {f['tfds_prepare_seconds']:.1f} s")
    load = f.get("whole_process_load_average")
    print(f"machine: {f['cpu_cores']} CPU cores; load average {f['load_average_at_start']:.1f} at start"
          + (f", {load[0]:.1f} -> {load[1]:.1f} over the whole-process runs" if load else ""))  # fmt: skip
    if FLAGS.metrics_json:
        common.write_json(FLAGS.metrics_json, f)


if __name__ == "__main__":
    common.run(main)
