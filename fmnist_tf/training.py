"""Train, evaluate and export: ``run(config) -> dict of figures``. No flag parsing here."""

import dataclasses
import os
import pathlib
import time

import keras
import tensorflow as tf
from absl import logging

from fmnist_tf import data, export
from fmnist_tf.model import MODELS, OPTIMIZERS, build_model, compile_model

DEFAULT_EXPORT_DIR = pathlib.Path(__file__).resolve().parent.parent / "saved_models" / data.TFDS_NAME
WARMUP_EXAMPLES = 4


@dataclasses.dataclass
class Config:
    """Everything one training run needs; ``validate()`` says what is wrong before any work starts."""

    epochs: int = 5
    batch_size: int = 32
    optimizer: str = "rmsprop"
    learning_rate: float | None = None
    seed: int = 42
    model: str = "softmax"
    source: str = "tfds"
    raw_dir: str = str(data.DEFAULT_RAW_DIR)
    tfds_dir: str | None = None
    export_dir: str | None = str(DEFAULT_EXPORT_DIR)
    workdir: str | None = None
    # Batches run per call into the compiled graph: the same math, far less per-step Python overhead.
    steps_per_execution: int = 100
    verbose: int = 2

    def validate(self):
        """Raise ValueError naming the first bad field; check the folders the run reads and writes."""
        for name in ("epochs", "batch_size", "steps_per_execution"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate!r}")
        for name, allowed in (("source", data.SOURCES), ("model", MODELS), ("optimizer", OPTIMIZERS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not pathlib.Path(self.raw_dir).is_dir():
            raise data.DataError(f"raw_dir {self.raw_dir} does not exist or is not a folder")
        if self.export_dir:
            export.check_writable(self.export_dir)


def choose_strategy():
    """The tf.distribute strategy for the hardware present: TPU, then GPUs, then the default (CPU)."""
    # Only look for a TPU where one is configured: the resolver otherwise queries a metadata server.
    if os.environ.get("TPU_NAME") or pathlib.Path("/dev/accel0").exists():
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=os.environ.get("TPU_NAME", ""))
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy([d.name for d in gpus])
    if gpus:
        return tf.distribute.OneDeviceStrategy(gpus[0].name)
    return tf.distribute.get_strategy()


def strategy_devices(strategy):
    """Names of the devices ``strategy`` computes on."""
    if strategy is tf.distribute.get_strategy():
        # The default strategy places ops as TF does outside any strategy: the first device listed.
        return [tf.config.list_logical_devices()[0].name]
    return list(strategy.extended.worker_devices)


def make_deterministic(seed):
    """Seed Python, NumPy and TF, and make TF ops deterministic: same seed, same bits."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def make_datasets(config):
    """Raw (image, label) Datasets for train/validation/test from the configured source."""
    return data.load_splits(config.seed, config.source, config.raw_dir, config.tfds_dir)


def _callbacks(workdir):
    if not workdir:
        return []
    workdir = pathlib.Path(workdir)
    return [
        # Resumes an interrupted run from its last completed epoch when started again.
        keras.callbacks.BackupAndRestore(str(workdir / "backup")),
        keras.callbacks.TensorBoard(str(workdir / "tensorboard")),
    ]


def run(config, datasets=None, strategy=None):
    """Train ``config.model``, evaluate on validation and test, export; return a dict of figures.

    ``datasets`` (dict of raw train/validation/test Datasets) and ``strategy`` replace the defaults,
    for tests and for callers with their own data or cluster.
    """
    start = time.perf_counter()
    config.validate()
    strategy = strategy or choose_strategy()
    devices = strategy_devices(strategy)
    logging.info("strategy %s on %s", type(strategy).__name__, devices)
    datasets = datasets or make_datasets(config)
    # After the data: a first TFDS prepare draws random numbers, which would shift the weight init.
    make_deterministic(config.seed)
    train = data.training_pipeline(datasets["train"], config.batch_size, config.seed)
    validation = data.evaluation_pipeline(datasets["validation"], config.batch_size)
    test = data.evaluation_pipeline(datasets["test"], config.batch_size)

    with strategy.scope():
        model = compile_model(
            build_model(config.model),
            config.optimizer,
            config.learning_rate,
            steps_per_execution=config.steps_per_execution,
        )
    fit_start = time.perf_counter()
    history = model.fit(
        train,
        epochs=config.epochs,
        validation_data=validation,
        callbacks=_callbacks(config.workdir),
        verbose=config.verbose,
        shuffle=False,  # the pipeline shuffles, seeded; Keras cannot shuffle a Dataset anyway
    )
    fit_seconds = time.perf_counter() - fit_start
    val = model.evaluate(validation, verbose=0, return_dict=True)
    tst = model.evaluate(test, verbose=0, return_dict=True)

    figures = {
        "val_accuracy": float(val["accuracy"]),
        "val_loss": float(val["loss"]),
        "test_accuracy": float(tst["accuracy"]),
        "test_loss": float(tst["loss"]),
        "history": {k: [float(v) for v in values] for k, values in history.history.items()},
        "fit_seconds": fit_seconds,
        "strategy": type(strategy).__name__,
        "replicas": strategy.num_replicas_in_sync,
        "devices": list(devices),
        "config": dataclasses.asdict(config),
        "export_path": None,
    }
    if config.export_dir:
        warmup = next(iter(datasets["test"].batch(WARMUP_EXAMPLES).take(1)))[0].numpy()
        path = export.export_saved_model(model, config.export_dir, warmup_images=warmup)
        export.write_model_config(pathlib.Path(config.export_dir).parent / "models.config", config.export_dir)
        figures["export_path"] = str(path)
    figures["seconds"] = time.perf_counter() - start
    return figures
