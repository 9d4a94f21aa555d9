"""Score an exported SavedModel on the 10,000 test images through its serving_default signature.

    python scripts/evaluate.py     (the latest version of saved_models/fashion_mnist -> reports/fashion_mnist/<N>/)
    python scripts/evaluate.py --model_dir=saved_models/fashion_mnist_cnn --out_dir=eval
    python scripts/evaluate.py --model_dir=lite/model_int8.tflite --out_dir=eval_int8   (through LiteRT)
    python scripts/evaluate.py --model_dir=saved_models/fashion_mnist_cnn_bn --compare_to=reports/fashion_mnist_cnn/1/report.json
"""

import json
import os
import pathlib

from absl import flags

from fmnist_tf import configs
from fmnist_tf.cli import common

# Reports land beside the exports, never inside a version folder (TF Serving would serve what is there).
REPORTS_DIR = "reports"

common.define_model_dir_flag(default=configs.default_export_dir("softmax"), also=", or a LiteRT .tflite file")
flags.DEFINE_string(
    "out_dir",
    None,
    "Where to write report.json, confusion_matrix.png and mistakes.png; "
    f"default {REPORTS_DIR}/<base path's name>/<version> (for a .tflite file, {REPORTS_DIR}/<folder>/<file name>).",
)
flags.DEFINE_string(
    "compare_to", None,
    "Another run's report.json: per-class recall and the most-confused pairs are printed beside its figures.",
)  # fmt: skip
common.define_data_flags()
FLAGS = flags.FLAGS


@common.one_line_errors
def main(argv):
    from fmnist_tf import evaluation
    from fmnist_tf.serving import layout

    out_dir = FLAGS.out_dir or default_out_dir(FLAGS.model_dir)  # a missing model stops here, before any build
    other = evaluation.read_report(FLAGS.compare_to) if FLAGS.compare_to else None  # before the work, too
    common.prepare_data(FLAGS.source, FLAGS.raw_dir, FLAGS.tfds_dir)
    with common.lite_output_held_back():  # a .tflite model starts a LiteRT interpreter
        report = evaluation.evaluate_model(FLAGS.model_dir, out_dir, FLAGS.source, FLAGS.raw_dir, FLAGS.tfds_dir)
    print(f"model {report['model_path']}: test accuracy {report['accuracy']:.4f} on {report['examples']} images")
    if other:
        print_comparison(evaluation.compare_reports(report, other), FLAGS.compare_to)
    else:
        print(f"{'class':<12}{'precision':>10}{'recall':>8}{'f1':>8}{'support':>9}")
        for row in report["per_class"]:
            print(f"{row['class_name']:<12}{row['precision']:>10.4f}{row['recall']:>8.4f}{row['f1']:>8.4f}"
                  f"{row['support']:>9}")  # fmt: skip
        print("most confused (true -> predicted):")
        for pair in report["most_confused"]:
            print(f"  {pair['true']} -> {pair['predicted']}: {pair['count']}")
    names = (evaluation.REPORT_FILE, evaluation.CONFUSION_MATRIX_FILE, evaluation.MISTAKES_FILE)
    print(f"wrote {', '.join(names)} to {out_dir}")
    # What made this version (an export's assets.extra/fmnist_tf.json; a .tflite file has none).
    provenance = layout.read_provenance(report["model_path"])
    if provenance:
        print("provenance of this version:")
        print(json.dumps(provenance, indent=2))


def print_comparison(comparison, other_path):
    """Per-class recall and most-confused pairs, this model's beside the other report's (``compare_reports``)."""
    print(f"compared to {other_path}: test accuracy {comparison['other_accuracy']:.4f}")
    print(f"{'class':<12}{'recall':>8}{'other':>8}{'change':>8}")
    for row in comparison["recall"]:
        change = row["recall"] - row["other_recall"]
        print(f"{row['class_name']:<12}{row['recall']:>8.4f}{row['other_recall']:>8.4f}{change:>+8.4f}")
    print(f"most confused (true -> predicted): {'count':>7}{'other':>7}")
    for pair in comparison["most_confused"]:
        print(f"  {pair['true'] + ' -> ' + pair['predicted']:<32}{pair['count']:>7}{pair['other_count']:>7}")


def default_out_dir(model_path):
    """reports/<base path's name>/<version> for the version that ``model_path`` scores (a file: its folder/stem)."""
    from fmnist_tf.serving import layout

    path = pathlib.Path(model_path)
    if not path.is_file():
        version = layout.saved_model_folder(model_path)
        path = pathlib.Path(version)  # a URL's too: only its last two names are used
    return os.path.join(REPORTS_DIR, path.resolve().parent.name, path.stem)


def run():
    common.run(main)


if __name__ == "__main__":
    run()
