"""The training job: ``run(config) -> dict of figures``: the data, the strategy, the loop, the evaluations, the
workdir's record and the export. No flag parsing here (``cli.train`` fills the Config from its flags).
"""

import contextlib
import dataclasses
import os
import shutil
import tempfile
import time

from fmnist_tf import configs, data, storage
from fmnist_tf.model import build_model, make_optimizer
from fmnist_tf.serving import export, layout, model_config
from fmnist_tf.training.distribute import choose_strategy, configure_threads, is_chief, strategy_devices, strategy_name
from fmnist_tf.training.loop import make_deterministic, make_evaluator, train
from fmnist_tf.training.workdir import Workdir

LEARNING_CURVES_FILE = "learning_curves.png"
WARMUP_EXAMPLES = 4


@dataclasses.dataclass
class Config:
    """Everything one training run needs; ``validate()`` says what is wrong before any work starts."""

    # None: the model's own default (configs.MODEL_DEFAULTS), filled in when the Config is made.
    epochs: int | None = None
    batch_size: int | None = None  # the global batch: split across replicas, so the math is the same on any cluster
    optimizer: str | None = None
    learning_rate: float | None = None
    seed: int = 42
    model: str = "softmax"
    source: str = "tfds"
    raw_dir: str = str(data.DEFAULT_RAW_DIR)
    tfds_dir: str | None = None
    export_dir: str | None = None  # None: configs.default_export_dir(model); "": no export
    workdir: str | None = None
    threads: int | None = None  # TF thread pools (0: TF's default); None: the model's default
    shuffle_buffer: int | None = None  # examples; None: the whole training split (a full shuffle)
    augment: bool | None = None  # flips and shifts of the training examples; None: the model's default
    learning_rate_decay: float | None = None  # the learning rate's factor per epoch; None: the model's default
    verbose: bool = True

    def __post_init__(self):
        defaults = configs.MODEL_DEFAULTS.get(self.model)
        if defaults is None:
            return  # validate() names the bad model
        for name in ("epochs", "batch_size", "optimizer", "threads", "augment", "learning_rate_decay"):
            if getattr(self, name) is None:
                setattr(self, name, getattr(defaults, name))
        if self.export_dir is None:
            self.export_dir = configs.default_export_dir(self.model)

    def validate(self):
        """Raise ValueError naming the first bad field; check the folders the run reads and writes."""
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.shuffle_buffer is not None and (
            isinstance(self.shuffle_buffer, bool) or not isinstance(self.shuffle_buffer, int) or self.shuffle_buffer < 1
        ):
            raise ValueError(f"shuffle_buffer must be a positive integer, got {self.shuffle_buffer!r}")
        if not isinstance(self.threads, int) or not 0 <= self.threads <= configs.MAX_THREADS:
            raise ValueError(
                f"threads must be 0 (TF's default) or a positive integer up to {configs.MAX_THREADS} (8 per core), "
                f"got {self.threads!r}"
            )
        if not isinstance(self.augment, bool):  # noqa: TRY004 (every bad field is a ValueError, one line in the CLI)
            raise ValueError(f"augment must be True or False, got {self.augment!r}")
        if isinstance(self.learning_rate_decay, bool) or not (
            isinstance(self.learning_rate_decay, (int, float)) and 0 < self.learning_rate_decay <= 1
        ):
            raise ValueError(f"learning_rate_decay must be in (0, 1], got {self.learning_rate_decay!r}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate!r}")
        for name, allowed in (("source", data.SOURCES), ("model", configs.MODELS), ("optimizer", configs.OPTIMIZERS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        data.check_raw_dir(self.raw_dir)
        if self.workdir:
            storage.check_glob_free(self.workdir, "workdir")
        if self.export_dir:
            export.check_writable(self.export_dir)
            model_config.read_listable_model_config(layout.model_config_path(self.export_dir), self.export_dir)


def run(config, datasets=None, strategy=None):
    """Train ``config.model``, evaluate on validation and test, export; return a dict of figures.

    ``datasets`` (dict of train/validation/test Datasets of raw examples or blocks of them, ``data.as_examples``)
    and ``strategy`` replace the defaults, for tests and for callers with their own data or cluster; the
    datasets are streamed through the same pipeline, never held in memory. With ``config.workdir``, the workdir's
    recorded settings are checked and its lock taken before any data is read (``workdir.Workdir``).
    """
    start = time.perf_counter()
    config.validate()
    configure_threads(config.threads)
    strategy = strategy or choose_strategy()
    chief = is_chief(strategy)
    workdir = Workdir(config.workdir) if config.workdir else None
    # Only the chief writes to the workdir; the other workers of a cluster read its checkpoints.
    with workdir.lock() if workdir and chief else contextlib.nullcontext():
        figures = _run(config, datasets, strategy, chief, workdir)
    figures["seconds"] = time.perf_counter() - start
    return figures


def _run(config, datasets, strategy, chief, workdir):
    settings = dataclasses.asdict(config)
    finished = False
    if workdir:
        finished = workdir.check(settings, config.epochs) == config.epochs
        if chief:
            workdir.record(settings)
    devices = strategy_devices(strategy)
    if config.verbose:
        print(f"strategy {strategy_name(strategy)} on {', '.join(devices)}")
    if datasets is None:
        splits = data.load_splits(config.seed, config.source, config.raw_dir, config.tfds_dir)
    else:
        splits = {name: data.as_examples(ds, f"the {name} dataset given") for name, ds in datasets.items()}
    # After the data: a first TFDS prepare draws random numbers, which would shift the weight init.
    make_deterministic(config.seed)
    with strategy.scope():
        model = build_model(config.model)
        steps_per_epoch = -(-splits["train"].count // config.batch_size)
        optimizer = make_optimizer(config.optimizer, config.learning_rate, config.learning_rate_decay, steps_per_epoch)

    refresh_lock = (lambda _: workdir.refresh_lock()) if workdir and chief else None
    evaluate = make_evaluator(model)
    fit_start = time.perf_counter()
    history, shard = train(model, optimizer, splits["train"], splits["validation"], config.epochs, config.batch_size,
                           config.seed, strategy, config.shuffle_buffer, config.workdir, config.verbose,
                           refresh_lock, config.augment, evaluate)  # fmt: skip
    fit_seconds = time.perf_counter() - fit_start
    # The last epoch evaluated these weights on validation already (or, resumed, its checkpoint did).
    val_loss, val_accuracy = history["val_loss"][-1], history["val_accuracy"][-1]
    test_loss, test_accuracy = evaluate(splits["test"])

    figures = {
        "val_accuracy": val_accuracy,
        "val_loss": val_loss,
        "test_accuracy": test_accuracy,
        "test_loss": test_loss,
        "history": history,
        "fit_seconds": fit_seconds,
        "strategy": strategy_name(strategy),
        "replicas": strategy.num_replicas_in_sync,
        "devices": devices,
        "chief": chief,
        "shard": shard,
        "config": settings,
        "export_path": None,
        "exported_before": False,
    }
    if workdir and chief:
        from fmnist_tf import plots  # matplotlib: only runs with a workdir draw, so only they import it

        plots.save_learning_curves(os.path.join(config.workdir, LEARNING_CURVES_FILE), history)
    if config.export_dir:
        # A finished run started again trains nothing: the version it exported is still its result.
        previous = workdir.previous_export(config.export_dir) if finished else None
        if previous:
            figures["export_path"], figures["exported_before"] = previous, True
        else:
            export.check_finite_weights(model)  # a diverged run is not published
            provenance = export.training_provenance(figures["config"], figures)
            warmup_images = next(splits["test"].blocks.as_numpy_iterator())[0][:WARMUP_EXAMPLES]
            figures["export_path"] = _export(model, config.export_dir, warmup_images, chief, provenance)
            if workdir and chief:
                workdir.record_export(config.export_dir, figures["export_path"])
    return figures


def _export(model, export_dir, warmup_images, chief, provenance):
    """Export a version from the chief; other workers export to a scratch folder and delete it."""
    if chief:
        path = export.export_saved_model(model, export_dir, warmup_images=warmup_images, provenance=provenance)
        model_config.write_model_config(layout.model_config_path(export_dir), export_dir)
        return str(path)
    scratch = tempfile.mkdtemp(prefix="fmnist-worker-export-")
    try:
        export.export_saved_model(model, os.path.join(scratch, os.path.basename(export_dir.rstrip("/"))))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return None
