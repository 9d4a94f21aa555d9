"""What a job's door does before its main: file the job's flags under the door's name, and start TensorFlow
without its C++ start-up chatter on stderr (``held_back_stderr``, which the LiteRT jobs use for LiteRT's too).

absl's ``--help`` lists the flags that the module named by ``sys.argv[0]`` defines (or declares key flags),
and ``--helpfull`` lists that module first; a job's flags are defined in ``fmnist_tf.cli.<job>`` but run
from a door (``scripts/<job>.py``, an installed ``fmnist-<job>`` with hyphens, or ``python -m``).

TF 2.20+ writes a few lines from its C++ runtime while it is imported and while it first probes for
devices (``WARNING: All log messages before absl::InitializeLog()...``, CUDA probing, oneDNN), before absl
logging is initialised, so ``TF_CPP_MIN_LOG_LEVEL`` cannot silence them. Here TensorFlow is imported with
the process's stderr (file descriptor 2, which the C++ runtime writes to) held in a temporary file; then
only the lines that the log level would have hidden (``startup_noise``) are dropped. If the import fails, every held
line is written back, so a broken TensorFlow install is shown in full.

Standard library and absl only (TensorFlow is imported inside ``start_tensorflow``), so any door may use
it, also one that must not import the rest of the package.
"""

import atexit
import contextlib
import gc
import os
import re
import sys
import tempfile

from absl import flags

# A C++ log line's prefix, in absl's format (TF 2.21: ``I0000 00:00:1796050687.080189   10402 port.cc:153] ``) or in
# TSL's (TF 2.20: ``2026-12-04 23:16:38.858621: I tensorflow/core/util/port.cc:153] ``); {s}: the severities matched.
_LOG_PREFIX = r"(?:[{s}]\d{{4}} [\d:.]+\s+\d+ |\d{{4}}-\d\d-\d\d [\d:.]+: [{s}] )[\w./-]+:\d+\] "
SEVERITIES = "IWEF"  # TF_CPP_MIN_LOG_LEVEL=n hides the first n: info, warning, error, fatal


def startup_noise(min_log_level):
    """Patterns of the start-up lines that ``TF_CPP_MIN_LOG_LEVEL=min_log_level`` would have hidden had absl
    logging been set up: C++ log lines below that severity, whatever they say (a GPU or TPU build says other
    things than a CPU one), and the few lines that belong to them. Nothing with level 0."""
    if min_log_level < 1:
        return ()
    quiet = SEVERITIES[:min_log_level]
    return tuple(
        re.compile(pattern)
        for pattern in (
            _LOG_PREFIX.format(s=quiet),
            # absl's own warning that the lines above it were written before it was set up.
            r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$",
            # The second line of an info message ("This TensorFlow binary is optimized to use ...").
            r"To enable the following instructions: [\w .]+, in other operations, rebuild TensorFlow with the "
            r"appropriate compiler flags\.$",
            # An error only in name: TF's CUDA build probing a machine with no GPU driver.
            _LOG_PREFIX.format(s=SEVERITIES) + r"failed call to cuInit: .*\(303\)$",
        )
    )


def min_log_level():
    """TF_CPP_MIN_LOG_LEVEL as TensorFlow reads it (0 when unset or not a number)."""
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL") or 0)
    except ValueError:
        return 0


def file_flags_under_door(module_name):
    """File the flags that ``module_name`` defines under the door's name (``sys.argv[0]``) for absl's help.

    Run as ``python -m``, the job's module is ``__main__`` and absl files its flags there already.
    """
    by_module = flags.FLAGS.flags_by_module_dict()
    if module_name != "__main__" and module_name in by_module:
        by_module.setdefault(sys.argv[0], []).extend(by_module.pop(module_name))


# Lines LiteRT's C++ side writes to stderr, whatever the log level, as a model is quantized (its settings) and
# as an interpreter starts (its default CPU delegate): information, not problems.
LITE_NOISE = tuple(
    re.compile(pattern)
    for pattern in (
        r"fully_quantize: \d+, inference_type: \d+, input_inference_type: \w+, output_inference_type: \w+$",
        r"INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$",
    )
)


def without_noise(text, noise):
    """``text`` without the lines that match one of the ``noise`` patterns."""
    return "".join(line for line in text.splitlines(keepends=True) if not any(p.match(line.rstrip("\n")) for p in noise))


@contextlib.contextmanager
def held_back_stderr(noise):
    """Hold whatever the block writes to stderr, file descriptor 2 (C++ as well as Python), in a temporary file;
    then write it back without the lines matching ``noise``, or all of it if the block raised."""
    sys.stderr.flush()
    saved = os.dup(2)
    failed = True
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            text = held.read().decode(errors="replace")
            sys.stderr.write(text if failed else without_noise(text, noise))
            sys.stderr.flush()


# Keras 3, which TensorFlow imports as it starts, imports scikit-learn and matplotlib when they are installed,
# only for keras.wrappers (scikit-learn estimators) and keras.visualization, which no job uses: a large part
# of TensorFlow's start (BUILD_NOTES.md has the figure). Keras treats both as optional (``try: import ... except
# ImportError``).
KERAS_OPTIONAL_IMPORTS = ("sklearn", "matplotlib")


def cpp_logs_held_back():
    """``held_back_stderr`` dropping the C++ log lines that TF_CPP_MIN_LOG_LEVEL would have hidden
    (``startup_noise``): TF's start, or a library loaded through TF's C API, logs before absl logging is set up."""
    return held_back_stderr(startup_noise(min_log_level()))


def import_tensorflow():
    """``import tensorflow`` with Keras's optional scikit-learn and matplotlib imports skipped (both stay
    importable for the job's own use afterwards; keras.wrappers and keras.visualization do not work), and a
    quick exit."""
    hidden = [name for name in KERAS_OPTIONAL_IMPORTS if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # an import of a None entry raises ImportError
    try:
        import tensorflow as tf
    finally:
        for name in hidden:
            if sys.modules.get(name, "") is None:
                del sys.modules[name]
    # At exit, Python's collector would walk the millions of objects TensorFlow and Keras made (seconds of a
    # short job); frozen, they are left to the process's end. Run last (atexit is LIFO), after every other
    # exit handler; files, writers and logs are closed and flushed as before.
    atexit.register(gc.freeze)
    return tf


def start_tensorflow(hold_back=True):
    """Import TensorFlow and let it probe its devices, writing back only stderr lines that are not start-up noise.

    The device probe (``tf.config.list_physical_devices``) is where TF reports the CUDA probe; it does not
    start TF's runtime, so thread pools and multi-worker strategies can still be configured afterwards.
    ``hold_back=False`` leaves stderr alone (a user who asked for logs sees everything).
    """
    with cpp_logs_held_back() if hold_back else contextlib.nullcontext():
        tf = import_tensorflow()
        tf.config.list_physical_devices()
