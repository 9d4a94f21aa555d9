"""Pre-flight check of an export for TF Serving, with TensorFlow's C++ SavedModel loader.

    python scripts/check_serving.py --model_dir=saved_models/fashion_mnist

Prints one line per check (loads in the C++ loader, finite weights, each signature's inputs and outputs,
warmup records replayed, test accuracy through serving_default, readable by other users, listed in the
models.config beside the base path), then the version's provenance; exit status 1 when any check fails. Run
it with the TensorFlow of the TF Serving you deploy to (TF Serving 2.X embeds TensorFlow 2.X): it imports only
absl, NumPy, TensorFlow, tensorflow-serving-api and fmnist_tf's light modules (``cli.common``, ``data.files``,
``storage``, ``serving.layout``/``c_api``/``check``), not TFDS or the rest of fmnist_tf.
"""

import json
import sys

from absl import flags

from fmnist_tf.cli import common

common.define_model_dir_flag()
common.define_raw_dir_flag()
FLAGS = flags.FLAGS


@common.one_line_errors
def main(argv):
    from fmnist_tf.serving import check, layout

    with common.cpp_logs_held_back():
        checks, provenance = check.run_checks(FLAGS.model_dir, FLAGS.raw_dir)
    for line in checks:
        print(line)
    if provenance is None:
        print(f"provenance: none ({layout.PROVENANCE_FILE} absent)")
    else:
        print(f"provenance ({layout.PROVENANCE_FILE}):")
        print(json.dumps(provenance, indent=2))
    failed = [line.name for line in checks if not line.ok]
    if failed:
        sys.exit(f"error: {len(failed)} of {len(checks)} checks failed: {', '.join(failed)}")


def run():
    common.run(main)


if __name__ == "__main__":
    run()
