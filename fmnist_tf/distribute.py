"""Which tf.distribute strategy runs training, on which devices, with how many threads; who is the chief."""

import json
import os
import pathlib

import tensorflow as tf
from absl import logging


def _cluster_size():
    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    return sum(len(cluster.get(role, [])) for role in ("chief", "worker"))


def choose_strategy():
    """The tf.distribute strategy for what is present: a TF_CONFIG cluster, a TPU, GPUs, else the CPU."""
    if _cluster_size() > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
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


def configure_threads(threads):
    """Size TF's intra- and inter-op thread pools (0 keeps TF's default); False if TF already started.

    TF fixes its pools when its runtime starts, so this must run before any TF op.
    """
    if not threads:
        return True
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        logging.info("TF already started: thread pools stay as they are")
        return False
    return True


def strategy_devices(strategy):
    """Names of the devices ``strategy`` computes on."""
    if strategy is tf.distribute.get_strategy():
        # The default strategy places ops as TF does outside any strategy: the first device listed.
        return [tf.config.list_logical_devices()[0].name]
    return list(strategy.extended.worker_devices)


def is_chief(strategy):
    """True on the one worker that exports and writes figures (always, outside a cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "chief" or (not has_chief and resolver.task_type == "worker" and resolver.task_id == 0)
