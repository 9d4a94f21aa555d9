"""Shared fixtures: the shipped raw files; a prepared TFDS dir; a first user's run; one trained export; IDX file
makers. What several files need is made once per test run, whichever xdist worker asks first."""

import contextlib
import dataclasses
import fcntl
import gzip
import json
import os
import pathlib
import shutil
import signal
import struct
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# On a GPU machine the test processes and the jobs they start share the GPUs, instead of the first taking all memory.
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from fmnist_tf import data  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent


# Tests that need these fixtures (a TFDS build, minutes of training or converting) are in the slow tier, with the
# files marked slow as a whole: `-m "not slow"` is the inner loop.
SLOW_FIXTURES = {"first_user", "tfds_dir", "tfds_reference", "exports", "every_strategy", "cnn_export"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


def shared_folder(tmp_path_factory, name, make):
    """A folder made once per test run and shared by pytest-xdist's workers: the first to take its lock calls
    ``make(folder)``, the others wait and reuse what it made (a ``make`` that failed is tried again by the next).
    Read only for the tests: copy what you would change."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, above each worker's own
    folder, made = root / name, root / f"{name}.made"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not made.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            make(folder)
            made.touch()
    return folder


def wait_for(predicate, proc, timeout=120):
    """Poll ``predicate`` until true while ``proc`` still runs (the moment to kill it)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, "the process ended before the moment to kill it"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@dataclasses.dataclass
class FirstUser:
    home: pathlib.Path
    cwd: pathlib.Path
    killed: subprocess.CompletedProcess  # the first attempt, SIGKILLed while TFDS wrote its examples
    first: subprocess.CompletedProcess  # the same command run again, to the end


FIRST_RUN_FLAGS = ("--epochs=1", "--workdir=run", "--metrics_json=m.json")


def _make_first_user(root):
    home, cwd = root / "home", root / "work"
    home.mkdir()
    cwd.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(home)}
    command = script_command("train.py", *FIRST_RUN_FLAGS)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env=env)
    wait_for(lambda: any((home / "tensorflow_datasets" / "fashion_mnist").glob("incomplete.*/*train*")), proc)
    proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate()
    killed = subprocess.CompletedProcess(command, proc.returncode, out, err)
    first = run_script("train.py", *FIRST_RUN_FLAGS, cwd=cwd, env=env)
    runs = {name: [done.returncode, done.stdout, done.stderr] for name, done in (("killed", killed), ("first", first))}
    (root / "runs.json").write_text(json.dumps(runs))


@pytest.fixture(scope="session")
def first_user(tmp_path_factory):
    """A new user's first run, from an empty folder in a fresh HOME, as it often goes: ``train.py --epochs=1
    --workdir=run --metrics_json=m.json`` is killed (SIGKILL) while TFDS writes fashion_mnist's examples into
    ~/tensorflow_datasets, then the same command runs to the end. Made once per test run, for the tests of a
    first run."""
    root = shared_folder(tmp_path_factory, "first-user", _make_first_user)
    runs = json.loads((root / "runs.json").read_text())
    killed, first = (subprocess.CompletedProcess(FIRST_RUN_FLAGS, *runs[name]) for name in ("killed", "first"))
    return FirstUser(root / "home", root / "work", killed, first)


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
    """A TFDS data dir with fashion_mnist built offline from the shipped files and its decoded copies, made once
    per test run. Read only: copy it to damage it."""

    def make(folder):
        for split in data.RAW_FILES:
            data.load_examples(split, "tfds", tfds_dir=str(folder))

    return str(shared_folder(tmp_path_factory, "tfds", make))


@pytest.fixture(scope="session")
def tfds_reference(tfds_dir, tmp_path_factory):
    """{split: (images, labels)} as TFDS itself decodes its prepared records (``builder.as_dataset``), streamed:
    the source of truth (decoded once per test run and kept as .npy files for every worker)."""
    import tensorflow_datasets as tfds

    from fmnist_tf.data import decoded

    def make(folder):
        builder = tfds.builder(data.TFDS_NAME, data_dir=tfds_dir)
        for split in data.RAW_FILES:
            images, labels = data.to_numpy(decoded.tfds_blocks(builder, split))
            np.save(folder / f"{split}-images.npy", images)
            np.save(folder / f"{split}-labels.npy", labels)

    folder = shared_folder(tmp_path_factory, "tfds-reference", make)
    return {split: tuple(np.load(folder / f"{split}-{part}.npy") for part in ("images", "labels")) for split in data.RAW_FILES}


@pytest.fixture(scope="session")
def one_epoch_run(tmp_path_factory):
    """The main job's ``training.run`` for one epoch on the IDX source (seed 42), exported once per test run:
    (folder holding ``fashion_mnist/1`` and ``models.config``, the run's figures). Shared by several modules:
    copy the export before changing anything in it."""

    def make(folder):
        from fmnist_tf import training

        config = training.Config(epochs=1, source="idx", export_dir=str(folder / "fashion_mnist"), verbose=False)
        (folder / "figures.json").write_text(json.dumps(training.run(config)))

    folder = shared_folder(tmp_path_factory, "one-epoch-run", make)
    return folder, json.loads((folder / "figures.json").read_text())


@contextlib.contextmanager
def tmpfs(folder, options):
    """A tmpfs mounted at the new folder ``folder`` with mount ``options`` (e.g. "size=100k", "ro,size=100k") for
    the block: a small or read-only disk. Root only: the test is skipped elsewhere."""
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)]).returncode:
        pytest.skip(f"cannot mount a tmpfs ({options}) here: needs root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


# The name training reports for each kind of strategy its plan can choose (``training.distribute``).
STRATEGY_NAMES = {"default": "default strategy", "gpu": "OneDeviceStrategy", "gpus": "MirroredStrategy",
                  "tpu": "TPUStrategy", "multi_worker": "MultiWorkerMirroredStrategy"}  # fmt: skip


def planned_strategy():
    """(name, replicas or None if the plan cannot tell) of the strategy training chooses on this machine, planned
    from the physical devices: listing logical ones would start TF's runtime here and take the GPUs' memory."""
    import tensorflow as tf

    from fmnist_tf.training import distribute

    gpus = len(tf.config.list_physical_devices("GPU"))
    kind = distribute.plan_strategy(gpus=gpus).kind
    return STRATEGY_NAMES[kind], {"default": 1, "gpu": 1, "gpus": gpus}.get(kind)


def built_model_and_optimizer(kind="mlp"):
    """A ``kind`` model and its default optimizer, built: every variable a checkpoint holds exists."""
    from fmnist_tf import configs
    from fmnist_tf.model import build_model, make_optimizer

    model, optimizer = build_model(kind), make_optimizer(configs.MODEL_DEFAULTS[kind].optimizer)
    optimizer.build(model.trainable_variables)
    return model, optimizer


@pytest.fixture
def raw_copy(tmp_path):
    """A writable copy of the shipped raw folder, to damage."""
    return shutil.copytree(data.DEFAULT_RAW_DIR, tmp_path / "raw")


def write_idx(path, magic, dims, payload):
    """Write an IDX .gz file with the given header fields and payload bytes."""
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + payload)


def parse_idx(path):
    """An independent reader of an IDX .gz file, for checking the package's: NumPy on gunzipped bytes."""
    raw = gzip.open(path).read()
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw[4 + 4 * ndim :], np.uint8).reshape(dims)


def script_command(name, *args):
    return [sys.executable, str(REPO / "scripts" / name), *args]


def run_script(name, *args, timeout=600, cwd=REPO, env=None):
    """Run scripts/<name> as a user would (from ``cwd``, with ``env`` if given); return the CompletedProcess."""
    return subprocess.run(
        script_command(name, *args), capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env
    )


def error_lines(done):
    """The non-blank lines a script wrote to stderr: all of them, TensorFlow's start-up lines included, which the
    jobs hold back themselves (``cli.startup``); a test of a one-line error thus also fails on a leaked log line."""
    return [line for line in done.stderr.splitlines() if line.strip()]
