"""What every job shares: the data flags, flag parsing, JSON output, and known failures as one line on stderr.

Imports only absl and TF-free modules: flags must answer before TensorFlow loads."""

import functools
import json
import os
import sys

# TensorFlow's C++ start-up chatter (CUDA probing on a CPU machine) would bury the one-line errors.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

from fmnist_tf.data.files import DEFAULT_RAW_DIR, SOURCES


def define_data_flags():
    flags.DEFINE_enum("source", "tfds", list(SOURCES), "Where examples come from: TFDS or the raw IDX files.")
    flags.DEFINE_string("raw_dir", str(DEFAULT_RAW_DIR), "Folder holding the four original .gz files.")
    flags.DEFINE_string("tfds_dir", None, "TFDS data dir; default TFDS's own (~/tensorflow_datasets).")


def parse_flags(argv):
    """absl's flag parsing, with a bad value reported in one line (absl's default adds a second)."""
    try:
        argv = flags.FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"error: {e}")
    # TFDS and TF log their progress at INFO; a user asks for it with --verbosity=0 (or -v 1 for debug).
    if not flags.FLAGS["verbosity"].present:
        flags.FLAGS.verbosity = logging.WARNING
    return argv


def write_json(path, figures):
    with open(path, "w") as f:
        json.dump(figures, f, indent=2)
        f.write("\n")


def one_line_errors(main):
    """Wrap an absl main: known failures print one line on stderr and exit 1 (a traceback with --verbosity=1)."""

    @functools.wraps(main)
    def wrapper(argv):
        if len(argv) > 1:
            sys.exit(f"error: unexpected arguments {argv[1:]}")
        try:
            return main(argv)
        # DataError is a ValueError and ExportError an OSError: caught without importing their (TF) modules.
        except (ValueError, OSError) as e:
            if flags.FLAGS.verbosity >= logging.DEBUG:
                raise
            sys.exit(f"error: {e}")

    return wrapper


def run(main):
    """absl's app.run with one-line flag errors, the job's flags shown by ``--help`` whichever door ran it.

    absl's ``--help`` lists the flags of the module named by ``sys.argv[0]``; the flags live in
    ``fmnist_tf.cli.<job>`` (and the shared ones here), so they are declared key flags of the door.
    """
    # absl's --help prints the __main__ module's docstring as the usage: the job's, not the door's.
    sys.modules["__main__"].__doc__ = sys.modules[main.__module__].__doc__
    for module in (main.__module__, __name__):
        for flag in flags.FLAGS.get_key_flags_for_module(module):
            flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(main, flags_parser=parse_flags)
