"""The notebook's scikit-learn baseline: SGDClassifier(loss="log_loss") with k-fold cross-validation.

    python scripts/baseline.py [--metrics_json=PATH]
"""

from absl import flags

from fmnist_tf.cli import common

flags.DEFINE_integer("folds", 5, "Cross-validation folds.", lower_bound=2)
flags.DEFINE_integer("max_iter", 10, "SGDClassifier max_iter (epochs over the data).", lower_bound=1)
common.define_seed_flag()
flags.DEFINE_integer("n_jobs", -1, "Parallel CV fits; -1 uses every core.")
common.define_data_flags()
common.define_metrics_json_flag()
FLAGS = flags.FLAGS


@common.one_line_errors
def main(argv):
    from fmnist_tf import baseline

    common.prepare_data(FLAGS.source, FLAGS.raw_dir, FLAGS.tfds_dir)
    train, test = baseline.load_baseline_arrays(FLAGS.source, FLAGS.raw_dir, FLAGS.tfds_dir)
    figures = baseline.run_baseline(train, test, FLAGS.folds, FLAGS.max_iter, FLAGS.seed, FLAGS.n_jobs)
    for i, score in enumerate(figures["cv_scores"], 1):
        print(f"fold {i}: accuracy {score:.4f}")
    print(f"CV mean accuracy {figures['cv_mean']:.4f} ({FLAGS.folds} folds, {figures['cv_seconds']:.1f} s)")
    print(f"test accuracy {figures['test_accuracy']:.4f} (fit on all {len(train[1])} training images)")
    print(f"whole baseline {figures['seconds']:.1f} s")
    if figures["not_converged"]:
        print(
            f"note: {figures['not_converged']} of {figures['fits']} fits stopped at max_iter={FLAGS.max_iter} "
            "before converging (sklearn's ConvergenceWarning; expected at the notebook's setting)"
        )
    if FLAGS.metrics_json:
        common.write_json(
            FLAGS.metrics_json, {k: figures[k] for k in ("cv_scores", "cv_mean", "test_accuracy", "seconds")}
        )


def run():
    common.run(main)


if __name__ == "__main__":
    run()
