"""Train the Fashion-MNIST classifier, evaluate it, export a SavedModel version for TF Serving.

    python scripts/train.py --epochs=5
"""

from absl import app, flags

import _cli
from fmnist_tf import training
from fmnist_tf.model import MODELS, OPTIMIZERS

flags.DEFINE_integer("epochs", 5, "Passes over the 48,000 training images.", lower_bound=1)
flags.DEFINE_integer("batch_size", 32, "Global batch per training step (split across replicas).", lower_bound=1)
flags.DEFINE_enum("optimizer", "rmsprop", list(OPTIMIZERS), "Keras optimizer.")
flags.DEFINE_float("learning_rate", None, "Optimizer learning rate; default the optimizer's own.", lower_bound=0)
flags.DEFINE_integer("seed", 42, "Seeds the split, the epoch order and the weight initialisation.")
flags.DEFINE_enum("model", "softmax", list(MODELS), "Which model to train.")
_cli.define_data_flags()
flags.DEFINE_string("export_dir", str(training.DEFAULT_EXPORT_DIR), "Base path of the exported versions; '' skips export.")
flags.DEFINE_string("workdir", None, "Checkpoints (a killed run resumes from here) and TensorBoard logs.")
flags.DEFINE_string("metrics_json", None, "Write the figures to this JSON file.")
flags.DEFINE_integer("threads", None, "TF thread pools (0: TF's default); default the model's setting.", lower_bound=0)
FLAGS = flags.FLAGS


@_cli.one_line_errors
def main(argv):
    config = training.Config(
        epochs=FLAGS.epochs,
        batch_size=FLAGS.batch_size,
        optimizer=FLAGS.optimizer,
        learning_rate=FLAGS.learning_rate,
        seed=FLAGS.seed,
        model=FLAGS.model,
        source=FLAGS.source,
        raw_dir=FLAGS.raw_dir,
        tfds_dir=FLAGS.tfds_dir,
        export_dir=FLAGS.export_dir or None,
        workdir=FLAGS.workdir,
        threads=FLAGS.threads,
    )
    figures = training.run(config)
    print(f"strategy {figures['strategy']} on {', '.join(figures['devices'])}")
    shard = figures["shard"]
    if shard.get("input_pipelines", 1) > 1:
        print(f"input pipeline {shard['input_pipeline']} of {shard['input_pipelines']}: "
              f"this worker trained on {shard['examples']} examples")  # fmt: skip
    print(f"validation: loss {figures['val_loss']:.4f}  accuracy {figures['val_accuracy']:.4f}")
    print(f"test:       loss {figures['test_loss']:.4f}  accuracy {figures['test_accuracy']:.4f}")
    print(f"fit {figures['fit_seconds']:.1f} s, whole run {figures['seconds']:.1f} s")
    if figures["export_path"]:
        print(f"exported {figures['export_path']}")
    if FLAGS.metrics_json and figures["chief"]:
        _cli.write_json(FLAGS.metrics_json, figures)


if __name__ == "__main__":
    app.run(main, flags_parser=_cli.parse_flags)
