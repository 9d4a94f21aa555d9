"""Score an exported SavedModel on the 10,000 test images through its serving_default signature.

    python scripts/evaluate.py --model_dir=saved_models/fashion_mnist --out_dir=eval
"""

from absl import flags

from fmnist_tf.cli import common

flags.DEFINE_string(
    "model_dir", None, "A version folder, or a base path (its highest version is scored).", required=True
)
flags.DEFINE_string(
    "out_dir", None, "Where to write report.json, confusion_matrix.png and mistakes.png.", required=True
)
common.define_data_flags()
FLAGS = flags.FLAGS


@common.one_line_errors
def main(argv):
    from fmnist_tf import evaluation

    report = evaluation.evaluate_saved_model(
        FLAGS.model_dir, FLAGS.out_dir, FLAGS.source, FLAGS.raw_dir, FLAGS.tfds_dir
    )
    print(f"model {report['model_path']}: test accuracy {report['accuracy']:.4f} on {report['examples']} images")
    print(f"{'class':<12}{'precision':>10}{'recall':>8}{'f1':>8}{'support':>9}")
    for row in report["per_class"]:
        print(
            f"{row['class_name']:<12}{row['precision']:>10.4f}{row['recall']:>8.4f}{row['f1']:>8.4f}{row['support']:>9}"
        )
    print("most confused (true -> predicted):")
    for pair in report["most_confused"]:
        print(f"  {pair['true']} -> {pair['predicted']}: {pair['count']}")
    names = (evaluation.REPORT_FILE, evaluation.CONFUSION_MATRIX_FILE, evaluation.MISTAKES_FILE)
    print(f"wrote {', '.join(names)} to {FLAGS.out_dir}")


def run():
    common.run(main)


if __name__ == "__main__":
    run()
