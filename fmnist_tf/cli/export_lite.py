"""Convert an export to LiteRT models (float32 and int8) and measure them through the LiteRT interpreter.

    python scripts/export_lite.py --model_dir=saved_models/fashion_mnist --out_dir=lite [--metrics_json=PATH]

Writes model_float32.tflite, model_int8.tflite and labels.txt; prints per model its size, test accuracy,
agreement with the SavedModel's classes and batch-1 latency.
"""

from absl import flags

from fmnist_tf.cli import common

common.define_model_dir_flag()
flags.DEFINE_string("out_dir", None, "Where to write the .tflite models and labels.txt.", required=True)
common.define_seed_flag()
common.define_metrics_json_flag()
common.define_data_flags()
FLAGS = flags.FLAGS


@common.one_line_errors
def main(argv):
    from fmnist_tf.serving import lite

    common.check_output_file(FLAGS.metrics_json, "--metrics_json")  # not after the conversion: figures would be lost
    common.prepare_data(FLAGS.source, FLAGS.raw_dir, FLAGS.tfds_dir)
    with common.lite_output_held_back():
        figures = lite.export_lite(
            FLAGS.model_dir, FLAGS.out_dir, FLAGS.source, FLAGS.raw_dir, FLAGS.tfds_dir, seed=FLAGS.seed
        )
    saved = figures["saved_model"]
    print(f"SavedModel {saved['path']}: test accuracy {saved['test_accuracy']:.4f}")
    print(f"{'model':<9}{'bytes':>11}{'test accuracy':>15}{'agreement':>11}{'batch-1 p50 ms':>16}  path")
    for kind in lite.MODEL_FILES:
        f = figures[kind]
        print(
            f"{kind:<9}{f['bytes']:>11,}{f['test_accuracy']:>15.4f}{f['agreement']:>11.4f}"
            f"{f['latency_ms_p50']:>16.3f}  {f['path']}"
        )
    print(f"class names: {figures['labels']}")
    if FLAGS.metrics_json:
        common.write_json(FLAGS.metrics_json, figures)


def run():
    common.run(main)


if __name__ == "__main__":
    run()
