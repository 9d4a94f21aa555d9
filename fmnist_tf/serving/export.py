"""Publishing a version: the SavedModel with its signatures (``signatures``), warmup records and provenance,
written complete before it appears under a base path TF Serving polls (its rules: ``layout``).

A base path holds integer-named version folders (``<base>/1``, ``<base>/2``...). TF Serving polls it and
loads any child whose name parses as an integer, so a version is written beside the base path's versions
under a name that does not, then renamed into place in one step once complete, with the modes a plain
``mkdir``/``open`` gives under the user's umask (a server running as another user reads it).

A base path may also be a gs://, s3:// or ram:// URL (TF's file layer). Object stores cannot rename a
folder in one step: there the version's files are copied into place one by one, ``saved_model.pb`` last
(``_publish_by_copy``).
"""

import datetime
import importlib.metadata
import json
import os
import pathlib
import re
import secrets
import shutil
import socket
import stat
import time

import keras
import tensorflow as tf

from fmnist_tf import storage
from fmnist_tf.data import RAW_FILES, sha256
from fmnist_tf.model import nonfinite_variables
from fmnist_tf.serving import layout, signatures

TMP_PREFIX = ".tmp-"
# A temporary export whose writer cannot be checked (another host's) is left alone this long, far longer than
# any export runs: on shared storage a live one must never be deleted under its writer.
STALE_TMP_SECONDS = 24 * 3600


class ExportError(OSError):
    """The export base path cannot be used."""


class NonFiniteWeightsError(ValueError):
    """The model's weights hold NaN or inf: training diverged, and such a model is never published."""


def check_finite_weights(model):
    """NonFiniteWeightsError, before anything is written, when ``model``'s weights hold NaN or inf."""
    nonfinite = nonfinite_variables(model.variables)
    if nonfinite:
        raise NonFiniteWeightsError(
            f"training diverged: the weights {nonfinite[0]} hold NaN or inf, so nothing was exported; "
            "train again with a lower --learning_rate (in another --workdir)"
        )


def _enclosing_saved_model(base_path):
    """The SavedModel folder (a published version) that the local ``base_path`` is or lies in, or None."""
    path = pathlib.Path(storage.local_path(base_path)).absolute()
    return next((p for p in (path, *path.parents) if p.is_dir() and layout.is_saved_model(p)), None)


def check_writable(base_path):
    """Create ``base_path`` if needed; ExportError with the reason when it cannot be written, ValueError when
    its path holds glob characters or lies inside a version (exporting would change a published version)."""
    storage.check_glob_free(base_path, "export dir")
    if storage.is_local(base_path):
        version = _enclosing_saved_model(base_path)
        if version is not None:
            raise ValueError(
                f"export dir {base_path} is inside the SavedModel {version}: exporting there would change a "
                f"published version; use a base path such as {version.parent}"
            )
    if not storage.is_local(base_path):
        try:
            tf.io.gfile.makedirs(str(base_path))
        except tf.errors.OpError as e:
            raise ExportError(f"export dir {base_path} cannot be written: {storage.reason(e)}") from e
        return str(base_path).rstrip("/")
    try:
        return storage.ensure_writable_dir(base_path)
    except OSError as e:
        raise ExportError(f"export dir {base_path} cannot be written: {storage.reason(e)}") from e


def _write_warmup(version_dir, logs):
    path = os.path.join(str(version_dir), layout.WARMUP_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:
        for log in logs:
            writer.write(log.SerializeToString())


def _write_saved_model(model, path):
    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, fn in signatures.serving_functions(model).items():
        archive.add_endpoint(name, fn)
    archive.write_out(str(path), verbose=False)


def _host():
    # Dots separate the fields of a temporary name: a host name keeps letters, digits and "-".
    return re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname())


def _tmp_name():
    """A temporary export's name: host, pid and start time of its writer (never all digits)."""
    return f"{TMP_PREFIX}{_host()}.{os.getpid()}.{int(time.time())}.{secrets.token_hex(4)}"


def _tmp_is_stale(name, now=None):
    """True for a temporary export whose writer is gone: a dead pid on this host, or, whatever the host
    (another host's pids cannot be checked from here), a start more than STALE_TMP_SECONDS ago."""
    fields = name[len(TMP_PREFIX) :].split(".")
    if len(fields) != 4 or not (fields[1].isdigit() and fields[2].isdigit()):
        return False  # not one of ours
    host, pid, started = fields[0], int(fields[1]), int(fields[2])
    if (now or time.time()) - started > STALE_TMP_SECONDS:
        return True
    return host == _host() and not storage.pid_alive(pid)


def remove_stale_tmp(base_path):
    """Delete temporary export folders left by writers that died mid-export; keep live ones, on any host."""
    for name in tf.io.gfile.listdir(str(base_path)):
        name = name.rstrip("/")
        if name.startswith(TMP_PREFIX) and _tmp_is_stale(name):
            storage.remove_tree(os.path.join(str(base_path), name))


def _version_info():
    try:
        package = importlib.metadata.version("fmnist_tf")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that is not installed
        package = None
    return {"fmnist_tf": package, "tensorflow": tf.__version__, "keras": keras.__version__}


def training_provenance(config, figures):
    """What a version records about the run that made it: ``config`` (dict of the training settings),
    ``figures`` (run()'s validation and test figures) and the SHA-256 of the four data files in
    ``config["raw_dir"]`` (both sources check them against TFDS's registered sums)."""
    paths = [pathlib.Path(config["raw_dir"]) / name for split in RAW_FILES.values() for name in split]
    return {
        "model": config["model"],
        "config": config,
        "figures": {key: figures[key] for key in ("val_accuracy", "val_loss", "test_accuracy", "test_loss")},
        "data_sha256": {path.name: sha256(path) for path in paths},
    }


def _write_provenance(version_dir, model_name, provenance):
    record = {
        "model_name": model_name,
        **(provenance or {}),
        "versions": _version_info(),
        "exported_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    path = os.path.join(str(version_dir), layout.PROVENANCE_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps(record, indent=2) + "\n")


def _make_tmp_dir(base_path):
    # Host and pid in the name let a later export tell a dead export's leftovers from a live one's. os.mkdir,
    # not mkdtemp (mode 0700): the folder becomes the version, and must get the umask's mode.
    while True:
        tmp = base_path / _tmp_name()
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:
            continue


def _apply_umask_modes(folder):
    """Give every folder and file under ``folder`` the mode plain mkdir/open give under the umask.

    ``folder`` was made by os.mkdir (0777 minus the umask), so its own mode says what the umask is;
    TF and Keras write some files and folders with modes of their own (e.g. 0755 whatever the umask).
    """
    folder_mode = stat.S_IMODE(os.stat(folder).st_mode)  # with the set-group-ID bit mkdir inherits, if any
    for root, folders, files in os.walk(folder):
        for name in folders:
            os.chmod(os.path.join(root, name), folder_mode)
        for name in files:
            os.chmod(os.path.join(root, name), folder_mode & 0o666)


def _next_version(base_path):
    return max(layout.version_paths(base_path), default=0) + 1


def _write_version(model, folder, warmup_images, model_name, provenance):
    """The whole version, under the temporary ``folder``: SavedModel, warmup records (if any), provenance."""
    _write_saved_model(model, folder)
    if warmup_images is not None:
        _write_warmup(folder, signatures.warmup_requests(model_name, warmup_images))
    _write_provenance(folder, model_name, provenance)


def export_saved_model(model, base_path, warmup_images=None, model_name=None, provenance=None):
    """Export ``model`` as the next version under ``base_path``; return the new version folder.

    Existing versions are never touched. The version is complete (SavedModel, warmup records, provenance
    in ``assets.extra/fmnist_tf.json``: ``provenance`` plus the library versions and the time) before it
    appears under an integer name; concurrent exports to one base path each get their own version.
    """
    check_finite_weights(model)
    base_path = check_writable(base_path)
    model_name = layout.served_name(base_path, model_name)
    try:
        remove_stale_tmp(base_path)
        if not storage.is_local(base_path):
            return _publish_by_copy(model, base_path, warmup_images, model_name, provenance)
        return _publish_by_rename(model, base_path, warmup_images, model_name, provenance)
    except (OSError, tf.errors.OpError) as e:
        if isinstance(e, ExportError):
            raise
        raise ExportError(f"export to {base_path} failed: {storage.reason(e)}; no version was published: free "
                          "space or fix the folder, then export again")  # fmt: skip


def _publish_by_rename(model, base_path, warmup_images, model_name, provenance):
    """``export_saved_model`` for a local base path: written complete under a temporary name, then renamed."""
    tmp = _make_tmp_dir(base_path)
    try:
        _write_version(model, tmp, warmup_images, model_name, provenance)
        _apply_umask_modes(tmp)
        while True:
            final = base_path / str(_next_version(base_path))
            try:
                # rename(2) of a folder fails when the target exists and is not empty: another export won.
                os.rename(tmp, final)
                return final
            except OSError:
                if not final.is_dir() or not any(final.iterdir()):
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _publish_by_copy(model, base_path, warmup_images, model_name, provenance):
    """``export_saved_model`` for an object store (gs://, s3://; ram:// here), where no folder can be renamed
    in one step and TF's rename of a folder is a copy of each object.

    The version is written complete under a temporary name TF Serving ignores, then copied into
    ``<base>/<N>/`` file by file with ``saved_model.pb`` last. TF Serving may list ``<N>`` before the copy
    ends (it lists the base path's objects), but a version without ``saved_model.pb`` fails to load and
    is retried (--max_num_load_retries=5, a minute apart, by default); once ``saved_model.pb`` is there,
    so are the variables, assets and warmup records. TFX's Pusher copies versions in relying on the same
    retries. Two exports racing to one bucket base path could pick the same number: one run per base path.
    """
    tmp = f"{base_path}/{_tmp_name()}"
    try:
        _write_version(model, tmp, warmup_images, model_name, provenance)
        final = f"{base_path}/{_next_version(base_path)}"
        storage.copy_tree(tmp, final, last=layout.SAVED_MODEL_FILES)
        return final
    finally:
        if tf.io.gfile.exists(tmp):
            storage.remove_tree(tmp)
