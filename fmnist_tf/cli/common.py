"""What every job shares: the data flags, flag parsing, a quiet TensorFlow start, the one-line TFDS build,
JSON output, and known failures as one line on stderr.

Imports only absl and TF-free modules: flags must answer before TensorFlow loads."""

import contextlib
import dataclasses
import functools
import io
import os
import sys
import time

from absl import app, flags, logging

from fmnist_tf.cli import startup
from fmnist_tf.data.files import DEFAULT_RAW_DIR, RAW_FILES, SOURCES, TFDS_NAME, DataError, check_raw_dir

# The data flags below are defined on behalf of each job: absl then files them under the job's module,
# and --helpfull lists them with the job's other flags.
flags.disclaim_key_flags()


def _raw_dir_is_a_folder(path):
    try:
        check_raw_dir(path)
    except DataError as e:
        raise flags.ValidationError(str(e)) from None
    return True


def define_raw_dir_flag():
    """--raw_dir: the folder of the four original .gz files (default the shipped copy), checked before TensorFlow."""
    flags.DEFINE_string("raw_dir", str(DEFAULT_RAW_DIR), "Folder holding the four original .gz files.")
    flags.register_validator("raw_dir", _raw_dir_is_a_folder)  # answered before TensorFlow starts


def define_tfds_dir_flag():
    """--tfds_dir: TFDS's data dir, where fashion_mnist is prepared (built from --raw_dir's files the first time)."""
    flags.DEFINE_string(
        "tfds_dir", None,
        "TFDS data dir, where fashion_mnist is built from the shipped files the first time; default TFDS's own "
        "($TFDS_DATA_DIR or ~/tensorflow_datasets).",
    )  # fmt: skip


def define_data_flags():
    """--source, --raw_dir and --tfds_dir, for the job that calls it."""
    flags.DEFINE_enum("source", "tfds", list(SOURCES), "Where examples come from: TFDS or the raw IDX files.")
    define_raw_dir_flag()
    define_tfds_dir_flag()


def define_seed_flag():
    """--seed: the one seed of every random draw a job makes, so that a job run again draws the same."""
    flags.DEFINE_integer(
        "seed", 42,
        "Seeds every random draw of the job (the split, the epoch order, the weight initialisation, augmentation, "
        "SGD's random_state, the int8 calibration sample): the same seed draws the same.",
        lower_bound=0,
    )  # fmt: skip


def define_model_dir_flag(default=None, also=""):
    """--model_dir: the export a job reads, a version folder or a base path (TF Serving's pick, its highest version);
    required unless ``default``. ``also`` names what else the job takes there."""
    flags.DEFINE_string(
        "model_dir", default,
        f"A version folder or a base path (its highest version){also}" + (f"; default {default}." if default else "."),
        required=default is None,
    )  # fmt: skip


def define_metrics_json_flag():
    """--metrics_json: where the job writes its figures (checked before any work by the jobs that take long)."""
    flags.DEFINE_string("metrics_json", None, "Write the figures to this JSON file (a local path or a URL).")


def flag_values(config_class):
    """The parsed flags named as ``config_class``'s dataclass fields, by name: a Config filled from the flags
    without a copy of each (a field with no flag keeps its default)."""
    names = {field.name for field in dataclasses.fields(config_class)}
    return {name: flags.FLAGS[name].value for name in names if name in flags.FLAGS}


def logs_requested():
    """True when the user asked for logs with --verbosity (or -v): then nothing is held back."""
    return flags.FLAGS["verbosity"].present


def lite_output_held_back():
    """A block whose LiteRT informational lines on stderr (``startup.LITE_NOISE``) are dropped, unless --verbosity
    asks for logs; anything else it writes to stderr is shown when it ends."""
    return contextlib.nullcontext() if logs_requested() else startup.held_back_stderr(startup.LITE_NOISE)


def cpp_logs_held_back():
    """A block whose C++ log lines below TF_CPP_MIN_LOG_LEVEL are dropped from stderr (``startup.cpp_logs_held_back``),
    unless --verbosity asks for logs."""
    return contextlib.nullcontext() if logs_requested() else startup.cpp_logs_held_back()


def parse_flags(argv):
    """absl's flag parsing with a bad value or a stray argument reported in one line (absl's default adds a
    second); TF and TFDS log only warnings and errors unless --verbosity asks for more."""
    try:
        argv = flags.FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"error: {e}")
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}")
    if not logs_requested():
        flags.FLAGS.verbosity = logging.WARNING
    return argv


def _parse_flags_then_start_tensorflow(argv):
    argv = parse_flags(argv)
    if not logs_requested():
        # TF's C++ runtime logs below ERROR would bury the one-line errors (a user may set it otherwise).
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    startup.start_tensorflow(hold_back=not logs_requested())
    return argv


def prepare_data(source, raw_dir, tfds_dir):
    """With ``source="tfds"``, build TFDS's fashion_mnist the first time, saying so in one line with its time.

    TFDS itself would print a wall of progress bars, "Downloading and preparing dataset Unknown size" (nothing
    is downloaded) and a warning about the folder it is about to fill: this line replaces them unless
    --verbosity asks for TFDS's own output. Once built, this is a quick no-op and the job's reads find it.
    """
    if source != "tfds":
        return
    from fmnist_tf.data import decoded

    # Valid decoded copies live inside the prepared dataset: nothing to build, and no TFDS import.
    if all(decoded.find(tfds_dir, split) for split in RAW_FILES):
        return
    import tensorflow_datasets as tfds

    from fmnist_tf import data

    stdout = sys.stdout  # this job's own line goes out while TFDS's are held back
    with _tfds_output_held_back():
        builder = tfds.builder(TFDS_NAME, data_dir=tfds_dir)
        if builder.is_prepared():
            return
        line = f"building TFDS {TFDS_NAME} from the files in {raw_dir} into {builder.data_dir} (once) ..."
        print(line, end="", file=stdout, flush=True)
        began = time.perf_counter()
        try:
            data.prepare_tfds(raw_dir, tfds_dir)
        finally:
            print(f" {time.perf_counter() - began:.1f} s", file=stdout, flush=True)


@contextlib.contextmanager
def _tfds_output_held_back():
    """No TFDS progress bars, prints on stdout or log lines below ERROR inside the block (unless logs_requested)."""
    if logs_requested():
        yield
        return
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.set_verbosity(verbosity)


def write_json(path, figures):
    """``figures`` as JSON at ``path``, a local file or a gs://, s3:// or ram:// URL (jobs have TF loaded by then)."""
    from fmnist_tf import storage

    storage.write_json(path, figures)


def check_output_file(path, flag):
    """Before any work: the folder of the output file ``path`` (the value of ``flag``, or None) can take it."""
    if path:
        from fmnist_tf import storage

        storage.check_writable_file(path, flag)


def _is_tensorflow_error(error):
    # TensorFlow is loaded by the time a job's main raises one of its errors; this module must not import it.
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(error, tf.errors.OpError)


def _one_line(error):
    text = str(getattr(error, "message", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def one_line_errors(main):
    """Wrap an absl main: known failures print one line on stderr and exit 1 (a traceback with --verbosity=1).

    Known: ValueError and OSError (the package's own errors derive from them), and TensorFlow's tf.errors, whose
    first line names the file TF's file layer failed on.
    """

    @functools.wraps(main)
    def wrapper(argv):
        try:
            return main(argv)
        # DataError is a ValueError and ExportError an OSError: caught without importing their (TF) modules.
        except Exception as e:  # noqa: BLE001 (anything else is re-raised at once)
            if not isinstance(e, (ValueError, OSError)) and not _is_tensorflow_error(e):
                raise
            if flags.FLAGS.verbosity >= logging.DEBUG:
                raise
            sys.exit(f"error: {_one_line(e)}")

    return wrapper


def run(main):
    """absl's app.run for a job: flags parsed (one-line errors) before TensorFlow starts, quietly, then ``main``.

    ``--help`` and ``--helpfull`` list the job's flags under the door's name (``startup.file_flags_under_door``).
    """
    # absl's --help prints the __main__ module's docstring as the usage: the job's, not the door's.
    sys.modules["__main__"].__doc__ = sys.modules[main.__module__].__doc__
    startup.file_flags_under_door(main.__module__)
    app.run(main, flags_parser=_parse_flags_then_start_tensorflow)
