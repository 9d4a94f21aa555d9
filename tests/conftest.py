"""Shared fixtures: the shipped raw files, a TFDS data dir prepared once from them, IDX file makers."""

import fcntl
import gzip
import os
import pathlib
import re
import shutil
import struct
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from fmnist_tf import data  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
    """A TFDS data dir with fashion_mnist prepared offline from the shipped files, and its array cache: made
    once per test run, shared by pytest-xdist's workers (the first to get the lock prepares, ~6 s on an idle
    machine; the others wait and reuse it). Read only: copy it to damage it."""
    from fmnist_tf.data import cache

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, above each worker's own
    path = root / "tfds-shared"
    with open(root / "tfds-shared.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            cache.find(str(path))
        except cache.CacheMiss:
            data.cache_tfds_arrays(data.DEFAULT_RAW_DIR, str(path))
    return str(path)


@pytest.fixture(scope="session")
def tfds_reference(tfds_dir):
    """{split: (images, labels)} as TFDS itself decodes its prepared files, streamed: the source of truth."""
    return {split: data.to_numpy(data.load_split(split, "tfds", tfds_dir=tfds_dir)) for split in data.RAW_FILES}


@pytest.fixture(scope="session")
def one_epoch_run(tmp_path_factory):
    """The main job's ``training.run`` for one epoch on the IDX source (seed 42), exported once per session:
    (folder holding ``fashion_mnist/1`` and ``models.config``, the run's figures). Shared by several modules:
    copy the export before changing anything in it."""
    from fmnist_tf import training

    folder = tmp_path_factory.mktemp("one_epoch_run")
    config = training.Config(epochs=1, source="idx", export_dir=str(folder / "fashion_mnist"), verbose=False)
    return folder, training.run(config)


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
    import subprocess

    return subprocess.run(
        script_command(name, *args), capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env
    )


# TensorFlow 2.21's C++ runtime logs at import, before any of our code runs, whatever TF_CPP_MIN_LOG_LEVEL says.
_TF_RUNTIME_LOG = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl::InitializeLog)")


def error_lines(done):
    """The lines a script wrote to stderr, without TensorFlow's own start-up log lines."""
    return [line for line in done.stderr.splitlines() if line.strip() and not _TF_RUNTIME_LOG.match(line)]
