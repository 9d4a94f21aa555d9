"""A run's workdir: its recorded settings, a lock against a second process, and the resume state.

Layout (a local folder or a bucket URL; every file through ``tf.io.gfile``)::

    <workdir>/run.json           the training settings, and the versions this run exported
    <workdir>/lock.json          pid and host of the process using the workdir
    <workdir>/checkpoints/       tf.train.CheckpointManager files and history.json
"""

import contextlib
import json
import os
import shutil
import socket
import tempfile
import time

import tensorflow as tf

from fmnist_tf import storage

HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")
# What shapes the training steps, as train.py's flags name it: a resumed run must have the same.
SETTINGS = ("model", "optimizer", "learning_rate", "batch_size", "seed", "source")
RUN_FILE = "run.json"
LOCK_FILE = "lock.json"
CHECKPOINTS = "checkpoints"
HISTORY_FILE = "history.json"
# A lock is refreshed after every epoch; one untouched for this long belongs to a process that is gone,
# whichever host it ran on (its pid can only be checked on its own host).
STALE_LOCK_SECONDS = 6 * 3600


class WorkdirError(ValueError):
    """The workdir belongs to another run, or is in use."""


def empty_history():
    """A Keras-style history with no epoch yet."""
    return {k: [] for k in HISTORY_KEYS}


def completed_epochs(workdir):
    """How many epochs the latest checkpoint under ``workdir`` holds (0 without one); read without a model."""
    latest = tf.train.latest_checkpoint(os.path.join(workdir, CHECKPOINTS))
    if latest is None:
        return 0
    # The reader of that very checkpoint: tf.train.load_variable first asks whether the prefix is a folder,
    # which ram:// (matching names by prefix) answers yes.
    return int(tf.compat.v1.train.NewCheckpointReader(latest).get_tensor("epoch/.ATTRIBUTES/VARIABLE_VALUE"))


def _absolute(path):
    # A relative export dir names another folder from another working directory; a URL stays as it is.
    return str(path) if "://" in str(path) else os.path.abspath(path)


def _flag_value(value):
    return "default" if value is None else str(value)


class Workdir:
    """The workdir of one run: ``check`` compares a run's settings with the recorded ones, ``record`` writes
    them, ``lock`` keeps a second process out, and run.json remembers the versions the run exported."""

    def __init__(self, path):
        self.path = str(path)
        self.run_file = os.path.join(self.path, RUN_FILE)
        self.lock_file = os.path.join(self.path, LOCK_FILE)
        self.holder = {"pid": os.getpid(), "host": socket.gethostname()}

    def read_record(self):
        """run.json's content, or None for a workdir no run has used."""
        return storage.read_json(self.run_file) if tf.io.gfile.exists(self.run_file) else None

    def check(self, settings, epochs):
        """WorkdirError, before any work, unless a run with ``settings`` for ``epochs`` may use this workdir.

        Another run's settings are named flag by flag; a finished run may be asked for more epochs, not fewer.
        Returns the epochs already completed.
        """
        record = self.read_record()
        done = completed_epochs(self.path)
        if record is None:
            if done:
                raise WorkdirError(f"workdir {self.path} holds checkpoints but no {RUN_FILE} with their settings: "
                                   "use another --workdir")  # fmt: skip
            return 0
        differing = [
            f"--{name}={_flag_value(settings[name])} (workdir: {_flag_value(record['settings'].get(name))})"
            for name in SETTINGS
            if settings[name] != record["settings"].get(name)
        ]
        if differing:
            raise WorkdirError(f"workdir {self.path} was trained with other settings: {', '.join(differing)}; "
                               "use the workdir's settings or another --workdir")  # fmt: skip
        if done > epochs:
            raise WorkdirError(f"workdir {self.path} already holds {done} epochs, more than --epochs={epochs}: "
                               f"ask for --epochs={done} or more, or use another --workdir")  # fmt: skip
        return done

    def record(self, settings):
        """Write run.json with ``settings`` unless the workdir has a record already (then they are equal)."""
        if self.read_record() is None:
            tf.io.gfile.makedirs(self.path)
            storage.write_json(self.run_file, {"settings": {k: settings[k] for k in SETTINGS}, "exports": {}})

    def previous_export(self, export_dir):
        """The version this run exported under ``export_dir`` before, if it is still there; else None."""
        version = ((self.read_record() or {}).get("exports") or {}).get(_absolute(export_dir))
        return version if version and tf.io.gfile.isdir(version) else None

    def record_export(self, export_dir, version):
        """Note in run.json that this run's final weights are ``version`` under ``export_dir``."""
        record = self.read_record()
        record["exports"][_absolute(export_dir)] = _absolute(version)
        storage.write_json(self.run_file, record)

    @contextlib.contextmanager
    def lock(self):
        """Hold lock.json (pid and host) while the block runs; WorkdirError if another live process holds it.

        A lock left by a killed process does not block: on this host its pid is gone (or is this very
        process, after a container restart), and on any host it stops being refreshed.
        """
        self._acquire()
        try:
            yield self
        finally:
            if self._read_lock() == self._lock_content(exclude_time=True):
                tf.io.gfile.remove(self.lock_file)

    def refresh_lock(self):
        """Mark the lock as still in use (after each epoch)."""
        storage.write_json(self.lock_file, self._lock_content())

    def _lock_content(self, exclude_time=False):
        return dict(self.holder) if exclude_time else {**self.holder, "refreshed": time.time()}

    def _read_lock(self, with_time=False):
        try:
            content = storage.read_json(self.lock_file)
        except (tf.errors.NotFoundError, ValueError):
            return None
        return content if with_time else {k: content.get(k) for k in self.holder}

    def _acquire(self):
        tf.io.gfile.makedirs(self.path)
        for _ in range(2):
            if self._create_lock():
                return
            holder = self._read_lock(with_time=True)
            if holder is not None and not self._stale(holder):
                raise WorkdirError(
                    f"workdir {self.path} is in use by pid {holder.get('pid')} on {holder.get('host')} "
                    f"({self.lock_file}): wait for it to finish, or delete that file if the process is gone"
                )
            with contextlib.suppress(tf.errors.NotFoundError):
                tf.io.gfile.remove(self.lock_file)
        raise WorkdirError(f"workdir {self.path}: another process keeps taking {self.lock_file}")

    def _create_lock(self):
        """Create lock.json unless it exists: atomically on a local disk (link(2) fails if it exists); on an
        object store by checking first, which two processes starting in the same instant could both pass."""
        text = json.dumps(self._lock_content())
        if not storage.is_local(self.path):
            if tf.io.gfile.exists(self.lock_file):
                return False
            storage.write_text(self.lock_file, text)
            return True
        fd, tmp = tempfile.mkstemp(prefix=".lock-", dir=storage.local_path(self.path))
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.link(tmp, storage.local_path(self.lock_file))
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def _stale(self, holder):
        if time.time() - float(holder.get("refreshed") or 0) > STALE_LOCK_SECONDS:
            return True
        if holder.get("host") != self.holder["host"]:
            return False
        pid = holder.get("pid")
        return pid == os.getpid() or not _alive(pid)


def _alive(pid):
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:  # alive, another user's process
        pass
    return True


class Checkpoints:
    """Resume state under ``workdir``: every model variable (trainable or not, with the Dropout layers'
    seed-generator states), the optimizer, the epoch (tf.train.CheckpointManager), and the history.

    The history JSON is written before each checkpoint, so after a kill it is never behind the
    checkpoint; on restore it is cut to the restored epoch. Workers other than the chief write to a
    local temporary folder, removed at the end (tf.distribute's multi-worker saving pattern).
    """

    def __init__(self, workdir, model, optimizer, chief):
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.restore_from = os.path.join(str(workdir), CHECKPOINTS)
        self.scratch = None if chief else tempfile.mkdtemp(prefix="fmnist-worker-")
        save_dir = self.restore_from if chief else self.scratch
        self.history_path = os.path.join(save_dir, HISTORY_FILE)
        # model.variables, not the model: Keras 3 layers do not hand their seed generators to tf.train's
        # object graph, so tf.train.Checkpoint(model=...) would drop the Dropout states.
        self.checkpoint = tf.train.Checkpoint(
            model_variables=list(model.variables), optimizer=optimizer, epoch=self.epoch
        )
        # Created now, restored with the rest: a save counter left for later is what TF warns about at exit.
        self.checkpoint.save_counter  # noqa: B018
        self.manager = tf.train.CheckpointManager(self.checkpoint, save_dir, max_to_keep=2)

    def restore(self):
        """Restore the latest checkpoint if any; return (first epoch to run, history so far)."""
        latest = tf.train.latest_checkpoint(self.restore_from)
        if latest is None:
            return 0, empty_history()
        self.checkpoint.restore(latest).assert_consumed()
        start = int(self.epoch.numpy())
        saved = storage.read_json(os.path.join(self.restore_from, HISTORY_FILE))
        return start, {k: saved[k][:start] for k in HISTORY_KEYS}

    def save(self, epoch, history):
        self.epoch.assign(epoch)
        tf.io.gfile.makedirs(os.path.dirname(self.history_path))
        storage.write_json(self.history_path, history)
        self.manager.save()

    def close(self):
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)
