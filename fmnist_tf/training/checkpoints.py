"""A run's resume state: tf.train checkpoints of the model, the optimizer and the epoch, and the history beside
them, in ``<workdir>/checkpoints/`` (a local folder or a bucket URL; every file through ``tf.io.gfile``).
"""

import contextlib
import os
import re
import shutil
import sys
import tempfile

import tensorflow as tf
from google.protobuf import text_format
from tensorflow.python.checkpoint import checkpoint_management

from fmnist_tf import storage
from fmnist_tf.model import nonfinite_variables

HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")
CHECKPOINTS = "checkpoints"
HISTORY_FILE = "history.json"


EPOCH_KEY = "epoch/.ATTRIBUTES/VARIABLE_VALUE"
STATE_FILE = "checkpoint"  # tf.train.CheckpointManager's list of its checkpoints
_CHECKPOINT_INDEX = re.compile(r"ckpt-([0-9]+)\.index")


class CheckpointError(ValueError):
    """A checkpoint, or the history beside it, cannot be read or written."""


def empty_history():
    """A Keras-style history with no epoch yet."""
    return {k: [] for k in HISTORY_KEYS}


def _reader(prefix):
    # The reader of that very checkpoint: tf.train.load_checkpoint first asks whether the prefix is a folder,
    # which ram:// (matching names by prefix) answers yes.
    return tf.compat.v1.train.NewCheckpointReader(prefix)


def checkpoint_damage(prefix):
    """Why the checkpoint at ``prefix`` cannot be restored (its index or a tensor unreadable, a checksum that
    does not match), or None when every tensor reads back intact."""
    try:
        reader = _reader(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)  # checks the tensor's stored CRC32C
    except (tf.errors.OpError, IndexError, ValueError) as e:
        return storage.reason(e)
    return None


def newest_intact_checkpoint(folder):
    """(prefix of the newest intact checkpoint in ``folder`` or None, [(prefix, damage)] of newer damaged ones).

    Found by listing ``ckpt-<N>.index`` files, not through CheckpointManager's ``checkpoint`` state file: a
    missing or damaged state file must not make a run start over and write ckpt-1 over a good checkpoint.
    """
    folder = str(folder)
    if not tf.io.gfile.isdir(folder):
        return None, []
    numbered = []
    for name in tf.io.gfile.listdir(folder):
        match = _CHECKPOINT_INDEX.fullmatch(name)
        if match:
            numbered.append((int(match.group(1)), os.path.join(folder, name[: -len(".index")])))
    skipped = []
    for _, prefix in sorted(numbered, reverse=True):
        damage = checkpoint_damage(prefix)
        if damage is None:
            return prefix, skipped
        skipped.append((prefix, damage))
    return None, skipped


def _no_intact_checkpoint(folder, skipped):
    damaged = "; ".join(f"{prefix}: {damage}" for prefix, damage in skipped)
    return CheckpointError(f"no intact checkpoint in {folder} ({damaged}): move {folder} aside to train from "
                           "the start, or use another --workdir")  # fmt: skip


def completed_epochs(workdir):
    """How many epochs the newest intact checkpoint under ``workdir`` holds (0 without one); read without a
    model. CheckpointError when there are checkpoints and none is intact."""
    folder = os.path.join(str(workdir), CHECKPOINTS)
    prefix, skipped = newest_intact_checkpoint(folder)
    if prefix is None:
        if skipped:
            raise _no_intact_checkpoint(folder, skipped)
        return 0
    return int(_reader(prefix).get_tensor(EPOCH_KEY))


def _state_file_problem(folder, restored):
    """Why CheckpointManager's state file in ``folder`` does not name ``restored`` as its latest, or None."""
    path = os.path.join(folder, STATE_FILE)
    try:
        state = text_format.Parse(storage.read_text(path), checkpoint_management.CheckpointState())
    except tf.errors.NotFoundError:
        return f"{path} is missing"
    except (text_format.ParseError, UnicodeDecodeError, tf.errors.OpError):
        return f"{path} does not parse"
    latest = state.model_checkpoint_path
    if os.path.basename(latest) != os.path.basename(restored):
        return f"{path} names {latest or 'no checkpoint'} as the latest"
    return None


class Checkpoints:
    """Resume state under ``workdir``: every model variable (trainable or not, with the Dropout layers'
    seed-generator states), the optimizer, the epoch (tf.train.CheckpointManager), and the history.

    The history JSON is written before each checkpoint, so after a kill it is never behind the
    checkpoint; on restore it is cut to the restored epoch. Workers other than the chief write to a
    local temporary folder, removed at the end (tf.distribute's multi-worker saving pattern).

    A run resumes from the newest intact checkpoint, saying on stderr which newer ones it skipped and why; with
    checkpoints but none intact, or a history that does not cover the restored epoch, it stops (CheckpointError).
    An epoch that ends with weights that are not finite (training diverged) is not saved: the run stops and the
    workdir keeps the last finite epoch.
    """

    def __init__(self, workdir, model, optimizer, chief):
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.restore_from = os.path.join(str(workdir), CHECKPOINTS)
        self.scratch = None if chief else tempfile.mkdtemp(prefix="fmnist-worker-")
        self.save_dir = self.restore_from if chief else self.scratch
        self.history_path = os.path.join(self.save_dir, HISTORY_FILE)
        self.model_variables = list(model.variables)
        # model.variables, not the model: Keras 3 layers do not hand their seed generators to tf.train's
        # object graph, so tf.train.Checkpoint(model=...) would drop the Dropout states.
        self.checkpoint = tf.train.Checkpoint(model_variables=self.model_variables, optimizer=optimizer, epoch=self.epoch)
        # Created now, restored with the rest: a save counter left for later is what TF warns about at exit.
        self.checkpoint.save_counter  # noqa: B018
        self._manager = None

    @property
    def manager(self):
        """The CheckpointManager, made once restore() has dealt with its state file (it reads it when made)."""
        if self._manager is None:
            self._manager = tf.train.CheckpointManager(self.checkpoint, self.save_dir, max_to_keep=2)
        return self._manager

    def restore(self):
        """Restore the newest intact checkpoint if any; return (first epoch to run, history so far)."""
        prefix, skipped = newest_intact_checkpoint(self.restore_from)
        if prefix is None:
            if skipped:
                raise _no_intact_checkpoint(self.restore_from, skipped)
            return 0, empty_history()
        for damaged, damage in skipped:
            print(f"warning: skipped the damaged checkpoint {damaged} ({damage}); resuming from {prefix}",
                  file=sys.stderr)  # fmt: skip
        state_problem = _state_file_problem(self.restore_from, prefix)
        if state_problem:
            if not skipped:
                print(f"warning: {state_problem}; resuming from {prefix}, the newest intact checkpoint", file=sys.stderr)
            # CheckpointManager would log that it ignores a state file that does not parse; the next save rewrites it.
            # Only the chief's: another worker reads the chief's folder and saves to a scratch one.
            if self.scratch is None:
                with contextlib.suppress(tf.errors.OpError):
                    tf.io.gfile.remove(os.path.join(self.restore_from, STATE_FILE))
        self.checkpoint.restore(prefix).assert_consumed()
        start = int(self.epoch.numpy())
        return start, self._read_history(start, prefix)

    def _read_history(self, start, prefix):
        path = os.path.join(self.restore_from, HISTORY_FILE)
        what_to_do = "restore it, or move the workdir aside and train from the start"
        try:
            saved = storage.read_json(path)
        except tf.errors.NotFoundError as e:
            raise CheckpointError(f"{path} is missing, so {prefix}'s {start} epochs have no history: {what_to_do}") from e
        except ValueError as e:
            raise CheckpointError(f"{e}; {what_to_do}") from e
        short = [k for k in HISTORY_KEYS if not isinstance(saved, dict) or len(saved.get(k) or []) < start]
        if short:
            raise CheckpointError(f"{path} holds fewer epochs of {short[0]} than the {start} of {prefix}: "
                                  f"{what_to_do}")  # fmt: skip
        return {k: saved[k][:start] for k in HISTORY_KEYS}

    def save(self, epoch, history):
        """Save ``epoch``'s state and ``history``; CheckpointError when the weights are not finite (nothing is
        saved) or the files cannot be written (the previous checkpoint stays the one to resume from)."""
        nonfinite = nonfinite_variables(self.model_variables)
        if nonfinite:
            raise CheckpointError(
                f"training diverged: after epoch {epoch} the weights {nonfinite[0]} hold NaN or inf; epoch {epoch} "
                f"was not saved and nothing exported ({self.save_dir} keeps the checkpoints before it): train again "
                "with a lower --learning_rate in another --workdir"
            )
        self.epoch.assign(epoch)
        try:
            tf.io.gfile.makedirs(os.path.dirname(self.history_path))
            storage.write_json(self.history_path, history)
            self.manager.save()
        except (OSError, tf.errors.OpError) as e:
            raise CheckpointError(
                f"cannot write the checkpoint of epoch {epoch} in {self.save_dir}: {storage.reason(e)}; free space "
                "or fix the folder, then run again: it resumes after the last checkpoint written"
            ) from e

    def close(self):
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)
