"""Which tf.distribute strategy runs training, on which devices, with how many threads; who is the chief;
whether the workers of a cluster agree before they train."""

import dataclasses
import json
import os
import re

import tensorflow as tf
from absl import logging

# TPU chips on the PCI bus: Google's vendor id and the TPU device ids (v2/v3, v4, v5p, v5e, v6e, 7x), the
# table JAX (jax/_src/hardware_utils.py) and Google's tpu-info read to find TPUs without starting a runtime.
_GOOGLE_PCI_VENDOR = "0x1ae0"
_TPU_PCI_DEVICES = frozenset({"0x0027", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076"})
# A TPU VM's chips: /dev/accel<N> up to v4; from v5e on /dev/vfio/<N> (tpu-info's chip_path). /dev/vfio/vfio
# and vfio groups of other devices exist on any VFIO host, so a vfio group counts only with a TPU on the bus.
_ACCEL_FILE = re.compile(r"accel\d+")
_VFIO_GROUP = re.compile(r"\d+")


@dataclasses.dataclass(frozen=True)
class StrategyChoice:
    """What ``choose_strategy`` builds, decided from the environment alone (no TF runtime, no network).

    ``kind``: "multi_worker" (a TF_CONFIG cluster), "tpu" (``tpu`` is TPUClusterResolver's argument:
    "local" for chips attached to this VM, else a TPU's name or grpc:// address), "gpus" (several),
    "gpu" (one), "default" (the CPU). ``reason`` says what was found, for the log.
    """

    kind: str
    reason: str
    tpu: str | None = None


def _cluster_size(environ):
    cluster = json.loads(environ.get("TF_CONFIG") or "{}").get("cluster", {})
    return sum(len(cluster.get(role, [])) for role in ("chief", "worker"))


def _pci_id(device_dir, name):
    try:
        with open(os.path.join(device_dir, name)) as f:
            return f.read().strip()
    except OSError:
        return None


def _tpu_on_pci_bus(pci_dir):
    try:
        devices = [os.path.join(pci_dir, name) for name in os.listdir(pci_dir)]
    except OSError:
        return False
    return any(
        _pci_id(d, "vendor") == _GOOGLE_PCI_VENDOR and _pci_id(d, "device") in _TPU_PCI_DEVICES for d in devices
    )


def local_tpu_chips(dev_dir="/dev", pci_dir="/sys/bus/pci/devices"):
    """Device files of the TPU chips attached to this machine (a TPU VM), sorted; empty if none.

    ``/dev/accel<N>`` (TPU v2-v4 VMs), or ``/dev/vfio/<N>`` (v5e, v5p, v6e and later) when the PCI bus shows
    a Google TPU. The folders are parameters so a test can present a TPU VM's files.
    """
    try:
        accel = [os.path.join(dev_dir, n) for n in os.listdir(dev_dir) if _ACCEL_FILE.fullmatch(n)]
    except OSError:
        accel = []
    if accel:
        return sorted(accel)
    vfio_dir = os.path.join(dev_dir, "vfio")
    try:
        groups = [os.path.join(vfio_dir, n) for n in os.listdir(vfio_dir) if _VFIO_GROUP.fullmatch(n)]
    except OSError:
        return []
    return sorted(groups) if groups and _tpu_on_pci_bus(pci_dir) else []


def plan_strategy(environ=None, dev_dir="/dev", pci_dir="/sys/bus/pci/devices", gpus=None):
    """Which strategy fits this machine: a TF_CONFIG cluster, then a TPU, then GPUs, else the CPU.

    A TPU: ``TPU_NAME`` when set ("local", or a TPU node's name or address: the user's explicit choice), else
    chips attached to this VM (``local_tpu_chips``) as TPUClusterResolver(tpu="local"): without a name TF's
    resolver asks GCE's metadata server for a TPU node and fails with "Please provide a TPU Name" on a TPU VM.
    ``gpus`` (a count) defaults to TF's logical GPUs; every argument is a seam for tests.
    """
    environ = os.environ if environ is None else environ
    workers = _cluster_size(environ)
    if workers > 1:
        return StrategyChoice("multi_worker", f"a cluster of {workers} workers in TF_CONFIG")
    if environ.get("TPU_NAME"):
        return StrategyChoice("tpu", f"TPU_NAME={environ['TPU_NAME']}", tpu=environ["TPU_NAME"])
    chips = local_tpu_chips(dev_dir, pci_dir)
    if chips:
        return StrategyChoice("tpu", f"TPU chips attached to this VM ({', '.join(chips)})", tpu="local")
    gpus = len(tf.config.list_logical_devices("GPU")) if gpus is None else gpus
    if gpus > 1:
        return StrategyChoice("gpus", f"{gpus} GPUs")
    if gpus:
        return StrategyChoice("gpu", "one GPU")
    return StrategyChoice("default", "no cluster, TPU or GPU")


def build_strategy(choice):
    """The tf.distribute strategy for a ``StrategyChoice``."""
    logging.info("strategy for %s", choice.reason)
    if choice.kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if choice.kind == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=choice.tpu)
        if choice.tpu != "local":
            # A TPU node is a remote TF server; a TPU VM's own chips are local devices with nothing to connect to.
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    if choice.kind == "gpus":
        return tf.distribute.MirroredStrategy(gpus)
    if choice.kind == "gpu":
        return tf.distribute.OneDeviceStrategy(gpus[0])
    return tf.distribute.get_strategy()


def choose_strategy():
    """The tf.distribute strategy for what is present (``plan_strategy``), built."""
    return build_strategy(plan_strategy())


def configure_threads(threads):
    """Size TF's intra- and inter-op thread pools (0 keeps TF's default).

    TF fixes its pools when its runtime starts, so this must run before any TF op; if TF has already started,
    the pools stay as they are (logged at info level).
    """
    if not threads:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        logging.info("TF already started: thread pools stay as they are")


# tf.distribute's public class names, most specific first (the classes' own names are private ones such as
# CollectiveAllReduceStrategy for MultiWorkerMirroredStrategy).
_PUBLIC_STRATEGIES = ("MultiWorkerMirroredStrategy", "MirroredStrategy", "OneDeviceStrategy", "TPUStrategy")


def strategy_name(strategy):
    """The name users know ``strategy`` by: its public tf.distribute class, or "default strategy" (TF's own
    placement, on whichever device TF picks first: the devices line says which)."""
    for name in _PUBLIC_STRATEGIES:
        if isinstance(strategy, getattr(tf.distribute, name)):
            return name
    if strategy is tf.distribute.get_strategy():
        return "default strategy"
    return type(strategy).__name__


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


class ClusterMismatchError(ValueError):
    """The workers of one cluster would not train the same run."""


def worker_count(strategy):
    """How many worker processes ``strategy`` spans (1 outside a cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return 1
    spec = resolver.cluster_spec().as_dict()
    return max(1, sum(len(spec.get(role, [])) for role in ("chief", "worker")))


def _gather_from_replicas(strategy, values):
    """int64 [replicas, len(values)]: every replica's ``values``, through the strategy's collectives."""
    local = tf.constant(values, tf.int64)

    @tf.function
    def gather():
        per_replica = strategy.run(lambda: local[tf.newaxis])
        return strategy.gather(per_replica, axis=0)

    return gather().numpy()


def agree_across_workers(strategy, checks):
    """Stop every worker with ClusterMismatchError unless all workers hold the same value for each check.

    ``checks``: (what, int value on this worker, what to do when they differ) triples. All workers take
    part in one all-gather, so all of them see the same values and stop (or go on) together, before any
    training collective could pair up mismatched steps.
    """
    workers = worker_count(strategy)
    if workers < 2:
        return
    rows = _gather_from_replicas(strategy, [value for _, value, _ in checks])
    per_worker = rows[:: len(rows) // workers]  # replicas are numbered worker by worker
    problems = [
        f"{what} differs ({', '.join(f'worker {w}: {row[i]}' for w, row in enumerate(per_worker))}): {fix}"
        for i, (what, _, fix) in enumerate(checks)
        if len(set(per_worker[:, i].tolist())) > 1
    ]
    if problems:
        raise ClusterMismatchError("workers disagree before training: " + "; ".join(problems))
