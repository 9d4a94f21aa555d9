"""Resume state of a training run under its workdir."""

import json
import os
import pathlib
import shutil
import tempfile

import tensorflow as tf

HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")


def empty_history():
    """A Keras-style history with no epoch yet."""
    return {k: [] for k in HISTORY_KEYS}


class Checkpoints:
    """Resume state under ``workdir``: model, optimizer, epoch (tf.train.CheckpointManager), and history.

    The history JSON is written before each checkpoint, so after a kill it is never behind the
    checkpoint; on restore it is cut to the restored epoch. Workers other than the chief write to a
    temporary folder, removed at the end (tf.distribute's multi-worker saving pattern).
    """

    def __init__(self, workdir, model, optimizer, chief):
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        directory = pathlib.Path(workdir) / "checkpoints"
        self.scratch = None if chief else tempfile.mkdtemp(prefix="fmnist-worker-")
        self.restore_from = directory
        save_dir = directory if chief else pathlib.Path(self.scratch)
        self.history_path = save_dir / "history.json"
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=self.epoch)
        self.manager = tf.train.CheckpointManager(checkpoint, str(save_dir), max_to_keep=2)
        self.checkpoint = checkpoint

    def restore(self):
        """Restore the latest checkpoint if any; return (first epoch to run, history so far)."""
        latest = tf.train.latest_checkpoint(str(self.restore_from))
        if latest is None:
            return 0, empty_history()
        self.checkpoint.restore(latest).assert_existing_objects_matched()
        start = int(self.epoch.numpy())
        saved = json.loads((self.restore_from / "history.json").read_text())
        return start, {k: saved[k][:start] for k in HISTORY_KEYS}

    def save(self, epoch, history):
        self.epoch.assign(epoch)
        self.history_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.history_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(history))
        os.replace(tmp, self.history_path)
        self.manager.save()

    def close(self):
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)
