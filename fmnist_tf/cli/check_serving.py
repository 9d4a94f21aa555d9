"""Pre-flight check of an export for TF Serving, with TensorFlow's C++ SavedModel loader.

    python scripts/check_serving.py --model_dir=saved_models/fashion_mnist

Prints one line per check (loads in the C++ loader, each signature's inputs and outputs, warmup records
replayed, readable by other users, listed in the models.config beside the base path, test accuracy through
serving_default), then the version's provenance; exit status 1 when any check fails. Run it with the
TensorFlow of the TF Serving you deploy to (TF Serving 2.X embeds TensorFlow 2.X): it imports only absl,
NumPy, TensorFlow and tensorflow-serving-api, not the rest of fmnist_tf (nor its data package, which is
why this door does not use fmnist_tf.cli.common).
"""

import json
import os
import sys

# TensorFlow's C++ start-up chatter would bury the report.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

from fmnist_tf.cli import startup  # noqa: E402  (standard library and absl only)

flags.DEFINE_string("model_dir", None, "A base path (its highest version is checked) or a version folder.", required=True)
flags.DEFINE_string(
    "raw_dir", None, "Folder holding t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz; default the shipped copy."
)
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}")
    from fmnist_tf.serving import check, layout

    try:
        checks, provenance = check.run_checks(FLAGS.model_dir, FLAGS.raw_dir or check.DEFAULT_RAW_DIR)
    except layout.ServingCheckError as e:
        if FLAGS.verbosity >= logging.DEBUG:
            raise
        sys.exit(f"error: {e}")
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


def _parse_flags(argv):
    try:
        argv = FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"error: {e}")
    if not FLAGS["verbosity"].present:
        FLAGS.verbosity = logging.WARNING
    startup.start_tensorflow(hold_back=not FLAGS["verbosity"].present)
    return argv


def run():
    sys.modules["__main__"].__doc__ = __doc__
    startup.file_flags_under_door(__name__)
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
