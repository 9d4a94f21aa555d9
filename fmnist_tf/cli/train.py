"""Train the Fashion-MNIST classifier, evaluate it, export a SavedModel version for TF Serving.

    python scripts/train.py --epochs=5
"""

from absl import flags

from fmnist_tf import configs
from fmnist_tf.cli import common

flags.DEFINE_enum("model", "softmax", list(configs.MODELS), f"Which model to train. Defaults per model: {configs.describe_defaults()}.")
flags.DEFINE_integer("epochs", None, "Passes over the training split; default the model's.", lower_bound=1)
flags.DEFINE_integer("batch_size", None, "Global batch per training step (split across replicas); default the model's.", lower_bound=1)
flags.DEFINE_enum("optimizer", None, list(configs.OPTIMIZERS), "Keras optimizer; default the model's.")
flags.DEFINE_float("learning_rate", None, "Optimizer learning rate; default the optimizer's own.", lower_bound=0)
flags.DEFINE_float(
    "learning_rate_decay", None, "The learning rate's factor each epoch (1: constant); default the model's.",
    lower_bound=0, upper_bound=1,
)  # fmt: skip
common.define_seed_flag()
common.define_data_flags()
flags.DEFINE_string(
    "export_dir", None,
    f"Base path of the exported versions; default {configs.default_export_dir('softmax')} for softmax, "
    f"{configs.default_export_dir('<model>')} for the others; '' skips export.",
)  # fmt: skip
flags.DEFINE_integer(
    "shuffle_buffer", None, "Examples in the shuffle buffer; default the whole training split (a full shuffle).",
    lower_bound=1,
)
flags.DEFINE_boolean(
    "augment", None,
    "Flip and shift the training examples, differently every epoch (--noaugment: off); default the model's.",
)  # fmt: skip
flags.DEFINE_string("workdir", None, "Checkpoints (a killed run resumes from here) and TensorBoard logs.")
common.define_metrics_json_flag()
flags.DEFINE_integer(
    "threads", None,
    f"TF thread pools (0: TF's default; at most {configs.MAX_THREADS}, 8 per core); default the model's setting.",
    lower_bound=0, upper_bound=configs.MAX_THREADS,
)  # fmt: skip
FLAGS = flags.FLAGS


@common.one_line_errors
def main(argv):
    from fmnist_tf import training

    config = training.Config(**common.flag_values(training.Config))
    config.validate()  # a bad flag stops here, before a first run builds TFDS
    common.check_output_file(FLAGS.metrics_json, "--metrics_json")  # not after training: the figures would be lost
    common.prepare_data(FLAGS.source, FLAGS.raw_dir, FLAGS.tfds_dir)
    figures = training.run(config)
    shard = figures["shard"]
    if shard.get("input_pipelines", 1) > 1:
        print(f"input pipeline {shard['input_pipeline']} of {shard['input_pipelines']}: "
              f"this worker trained on {shard['examples']} examples")  # fmt: skip
    print(f"validation: loss {figures['val_loss']:.4f}  accuracy {figures['val_accuracy']:.4f}")
    print(f"test:       loss {figures['test_loss']:.4f}  accuracy {figures['test_accuracy']:.4f}")
    print(f"fit {figures['fit_seconds']:.1f} s, whole run {figures['seconds']:.1f} s")
    if figures["exported_before"]:
        print(f"nothing new to export: this run exported {figures['export_path']} before")
    elif figures["export_path"]:
        print(f"exported {figures['export_path']}")
    if FLAGS.metrics_json and figures["chief"]:
        common.write_json(FLAGS.metrics_json, figures)


def run():
    common.run(main)


if __name__ == "__main__":
    run()
