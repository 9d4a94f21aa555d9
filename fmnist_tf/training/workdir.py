"""A run's workdir: its recorded settings (run.json), a lock against a second process (lock.json), and the
versions the run exported. The resume state beside them is ``checkpoints``'.

Layout (a local folder or a bucket URL; every file through ``tf.io.gfile``)::

    <workdir>/run.json           the training settings, and the versions this run exported
    <workdir>/lock.json          pid and host of the process using the workdir
    <workdir>/checkpoints/       tf.train.CheckpointManager files and history.json
    <workdir>/tensorboard/       the epochs' figures
"""

import contextlib
import json
import os
import socket
import tempfile
import time

import tensorflow as tf

from fmnist_tf import storage
from fmnist_tf.training.checkpoints import completed_epochs

# What shapes the training steps, as train.py's flags name it: a resumed run must have the same.
SETTINGS = ("model", "optimizer", "learning_rate", "batch_size", "seed", "source", "shuffle_buffer", "augment",
            "learning_rate_decay")
RUN_FILE = "run.json"
LOCK_FILE = "lock.json"
# A lock is refreshed after every epoch; one untouched for this long belongs to a process that is gone,
# whichever host it ran on (its pid can only be checked on its own host).
STALE_LOCK_SECONDS = 6 * 3600


class WorkdirError(ValueError):
    """The workdir belongs to another run, or is in use."""


def _absolute(path):
    # A relative export dir names another folder from another working directory; a URL stays as it is.
    return str(path) if storage.is_url(path) else os.path.abspath(path)


def _flag_value(value):
    return "default" if value is None else str(value)


class Workdir:
    """The workdir of one run: ``check`` compares a run's settings with the recorded ones, ``record`` writes
    them, ``lock`` keeps a second process out, and run.json remembers the versions the run exported."""

    def __init__(self, path):
        self.path = str(storage.check_glob_free(path, "workdir"))
        self.run_file = os.path.join(self.path, RUN_FILE)
        self.lock_file = os.path.join(self.path, LOCK_FILE)
        self.holder = {"pid": os.getpid(), "host": socket.gethostname()}

    def read_record(self):
        """run.json's content, or None for a workdir no run has used."""
        if not tf.io.gfile.exists(self.run_file):
            return None
        try:
            record = storage.read_json(self.run_file)
        except ValueError as e:
            raise WorkdirError(f"{e}; it records this workdir's settings: restore it, or use another --workdir") from e
        if not isinstance(record, dict) or not isinstance(record.get("settings"), dict):
            raise WorkdirError(f"{self.run_file} is not a run record (no settings): restore it, or use another --workdir")
        record.setdefault("exports", {})
        return record

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
            # A setting an older fmnist_tf did not record had one value then: the one recorded for it now.
            if name in record["settings"] and settings[name] != record["settings"][name]
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
        if tf.io.gfile.exists(self.path) and not tf.io.gfile.isdir(self.path):
            raise WorkdirError(f"workdir {self.path} is a file, not a folder: use another --workdir")
        try:
            tf.io.gfile.makedirs(self.path)
            self._try_acquire()
        except (OSError, tf.errors.OpError) as e:
            raise WorkdirError(f"workdir {self.path} cannot be written: {storage.reason(e)}; "
                               "use a writable --workdir") from e  # fmt: skip

    def _try_acquire(self):
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
            storage.replace_file(self.lock_file, text)
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
        return pid == os.getpid() or not storage.pid_alive(pid)
