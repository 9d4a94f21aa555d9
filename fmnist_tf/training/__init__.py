"""Training, by job: ``loop`` (the step, the epoch, ``train``, the evaluator), ``job`` (``Config`` and ``run``:
data, strategy, loop, evaluation, export), ``distribute`` (which tf.distribute strategy, and what workers agree on),
``checkpoints`` (the resume state) and ``workdir`` (a run's record and lock).

``from fmnist_tf import training`` then ``training.run(training.Config(...))`` is the library's way to train.
"""

from fmnist_tf.training.job import LEARNING_CURVES_FILE, Config, run
from fmnist_tf.training.loop import make_deterministic, make_evaluator, train

__all__ = ["LEARNING_CURVES_FILE", "Config", "make_deterministic", "make_evaluator", "run", "train"]
