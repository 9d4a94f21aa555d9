import gzip
import hashlib

import numpy as np
import pytest
import tensorflow as tf

from conftest import parse_idx, write_idx
from fmnist_tf import data


def test_shipped_files_are_the_ones_tfds_registers():
    sums = dict(reversed(line.split()) for line in (data.DEFAULT_RAW_DIR / "SHA256SUMS").read_text().splitlines())
    assert sums == data.registered_checksums()
    for split in data.RAW_FILES:
        data.check_split_files(data.DEFAULT_RAW_DIR, split)
    assert (data.DEFAULT_RAW_DIR / "LICENSE").read_text().startswith("The MIT License")


@pytest.mark.parametrize("split", ["train", "test"])
def test_idx_source_streams_the_files_exactly_in_their_order(split):
    images_file, labels_file = data.RAW_FILES[split]
    examples = data.load_examples(split, "idx")
    assert examples.count == data.SPLIT_SIZES[split] and examples.blocks.element_spec[0].shape.as_list() == [None, 28, 28]
    images, labels = data.to_numpy(examples)
    assert images.dtype == np.uint8 and images.shape == (data.SPLIT_SIZES[split], 28, 28)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(images, parse_idx(data.DEFAULT_RAW_DIR / images_file))
    np.testing.assert_array_equal(labels, parse_idx(data.DEFAULT_RAW_DIR / labels_file))


@pytest.mark.parametrize("split", ["train", "test"])
def test_tfds_source_yields_what_tfds_yields_and_the_files_hold(split, tfds_dir, tfds_reference):
    tfds_images, tfds_labels = tfds_reference[split]  # TFDS's own as_dataset, decoding its records
    examples = data.load_examples(split, "tfds", tfds_dir=tfds_dir)
    assert examples.count == len(tfds_labels) == data.SPLIT_SIZES[split]
    images, labels = data.to_numpy(examples)
    assert labels.dtype == tfds_labels.dtype == np.int64
    np.testing.assert_array_equal(images, tfds_images)
    np.testing.assert_array_equal(labels, tfds_labels)
    # The same examples as the files, in TFDS's order: the file order is restored for order-bound consumers.
    file_images, file_labels = data.load_arrays_in_file_order(split, "tfds", tfds_dir=tfds_dir)
    np.testing.assert_array_equal(file_images, data.load_arrays(split, "idx")[0])
    np.testing.assert_array_equal(file_labels, data.load_arrays(split, "idx")[1])


def test_normalize_maps_uint8_to_unit_float_flattened():
    images = np.arange(2 * 28 * 28, dtype=np.int64).reshape(2, 28, 28) % 256
    out = data.normalize(images.astype(np.uint8)).numpy()
    assert out.dtype == np.float32 and out.shape == (2, 784)
    np.testing.assert_array_equal(out, (images.reshape(2, 784) / np.float32(255)).astype(np.float32))
    assert out.min() == 0.0 and out.max() == 1.0
    assert data.normalize(np.zeros((28, 28), np.uint8)).shape == (784,)


def _fingerprints(examples):
    images, labels = data.to_numpy(examples)
    return [hashlib.sha1(image.tobytes()).hexdigest() for image in images], labels


def test_split_is_disjoint_covering_deterministic_and_balanced():
    train_all = data.load_examples("train", "idx")
    all_prints, _ = _fingerprints(train_all)
    train, validation = data.split_train_validation(train_all, seed=42)
    assert (train.count, validation.count) == (48_000, 12_000)
    train_prints, train_labels = _fingerprints(train)
    val_prints, val_labels = _fingerprints(validation)
    assert len(train_prints) == 48_000 and len(val_prints) == 12_000
    assert not set(train_prints) & set(val_prints)
    assert set(train_prints) | set(val_prints) == set(all_prints)
    for labels in (train_labels, val_labels):
        shares = np.bincount(labels, minlength=10) / len(labels)
        assert np.all(np.abs(shares - 0.1) <= 0.01), shares
    # The mask, position by position, in the source's order.
    mask = data.validation_mask(42, 60_000)
    np.testing.assert_array_equal(val_prints, np.array(all_prints)[mask])
    assert _fingerprints(data.split_train_validation(train_all, seed=42)[1])[0] == val_prints
    assert _fingerprints(data.split_train_validation(train_all, seed=7)[1])[0] != val_prints


def _small(count=10_000):
    """The test split (quickest to read) as Examples, and in memory."""
    examples = data.load_examples("test", "idx")
    return examples, data.to_numpy(examples)


def _epochs(examples, batch_size, seed, epochs, **kwargs):
    """Every chunk of ``epochs`` from training_data, grouped by epoch with chunks_per_epoch."""
    chunks = [(x.numpy(), y.numpy()) for x, y in data.training_data(examples, batch_size, seed, epochs, **kwargs)]
    replicas, context = kwargs.get("replicas", 1), kwargs.get("context")
    local = replicas // context.num_input_pipelines if context else 1  # one element per local replica and chunk
    per_epoch = data.chunks_per_epoch(examples.count, batch_size, replicas, kwargs.get("shuffle_buffer")) * local
    assert len(chunks) == per_epoch * len(epochs)
    return [chunks[i * per_epoch : (i + 1) * per_epoch] for i in range(len(epochs))]


def test_an_epoch_is_the_seeded_permutation_in_chunks_of_whole_batches():
    examples, (images, labels) = _small()
    (epoch0,) = _epochs(examples, 32, seed=1, epochs=range(0, 1))
    x = np.concatenate([c[0] for c in epoch0])
    y = np.concatenate([c[1] for c in epoch0])
    assert x.dtype == np.float32 and x.shape == (10_000, 784)
    # A buffer as large as the split: one window, the whole epoch permuted by epoch_order(seed, epoch).
    order = data.epoch_order(10_000, 1, 0).numpy()
    np.testing.assert_array_equal(y, labels[order])
    np.testing.assert_array_equal(x, data.normalize(images[order]).numpy())
    # Chunks of whole batches; the final partial batch (10,000 = 312 * 32 + 16) is kept, as Keras keeps it.
    assert all(len(c[1]) % 32 == 0 for c in epoch0[:-1]) and sum(len(c[1]) for c in epoch0) == 10_000
    # A pure function of (seed, epoch): epochs 1 and 2 from a fresh pipeline equal those of a run from epoch 0.
    run = _epochs(examples, 32, seed=1, epochs=range(0, 3))
    resumed = _epochs(examples, 32, seed=1, epochs=range(1, 3))
    for a, b in zip(run[1:], resumed, strict=True):
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)
    y1 = np.concatenate([c[1] for c in run[1]])
    assert not np.array_equal(y, y1) and sorted(y1) == sorted(labels)


def test_a_smaller_shuffle_buffer_still_gives_every_example_once_an_epoch():
    examples, (images, labels) = _small()
    position = {hashlib.sha1(image.tobytes()).hexdigest(): i for i, image in enumerate(images)}
    for buffer in (1_000, 4_000):
        epochs = _epochs(examples, 64, seed=5, epochs=range(2), shuffle_buffer=buffer)
        ys = [np.concatenate([c[1] for c in epoch]) for epoch in epochs]
        for y in ys:
            assert sorted(y) == sorted(labels)
        assert not np.array_equal(ys[0], ys[1])
        # Where each example of epoch 0 sits in the split: windows are permuted, and (buffer > a block) blocks move.
        xs = np.concatenate([c[0] for c in epochs[0]])
        order = np.array([position[hashlib.sha1((row * 255).round().astype(np.uint8).tobytes()).hexdigest()] for row in xs])
        assert sorted(order) == list(range(10_000))
        window = data.pipeline.window_size(10_000, 64, buffer)
        assert not np.array_equal(order[:window], np.sort(order[:window]))
        if buffer > examples.block:
            assert not np.array_equal(np.sort(order[:window]), np.arange(window))
        again = _epochs(examples, 64, seed=5, epochs=range(1), shuffle_buffer=buffer)[0]
        np.testing.assert_array_equal(np.concatenate([c[1] for c in again]), ys[0])


def test_replica_slices_partition_each_global_batch():
    examples, _ = _small()
    (whole,) = _epochs(examples, 32, seed=1, epochs=range(3, 4))
    whole_y = np.concatenate([c[1] for c in whole])[: 312 * 32]  # with replicas the partial batch is dropped
    # 4 replicas on 2 input pipelines of 2 local replicas each: each chunk yields one element per local replica.
    pipelines = []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id, num_replicas_in_sync=4)
        (chunks,) = _epochs(examples, 32, seed=1, epochs=range(3, 4), replicas=4, context=context)
        pipelines.append(chunks)
    rebuilt = []
    for c in range(0, len(pipelines[0]), 2):
        replica_parts = [pipelines[0][c][1], pipelines[0][c + 1][1], pipelines[1][c][1], pipelines[1][c + 1][1]]
        steps = len(replica_parts[0]) // 8
        assert all(len(part) == steps * 8 for part in replica_parts)
        rebuilt += [np.concatenate([part[s * 8 : (s + 1) * 8] for part in replica_parts]) for s in range(steps)]
    np.testing.assert_array_equal(np.concatenate(rebuilt), whole_y)
    with pytest.raises(ValueError, match="not divisible by the 3 replicas"):
        data.training_data(examples, 32, 1, range(1), replicas=3)


def test_evaluation_data_keeps_order_and_its_cache_serves_later_passes():
    examples, (images, labels) = _small()
    for cache in (False, True):
        batches = data.evaluation_data(examples, batch_size=3_000, cache=cache)
        for _ in range(2):
            got = list(batches)
            assert [len(y) for _, y in got] == [3_000, 3_000, 3_000, 1_000]
            np.testing.assert_array_equal(np.concatenate([y for _, y in got]), labels)
            np.testing.assert_array_equal(got[0][0].numpy(), data.normalize(images[:3_000]).numpy())


def test_a_callers_dataset_of_examples_or_blocks_becomes_examples():
    _, (images, labels) = _small()
    singles = tf.data.Dataset.from_tensor_slices((images[:2_500], labels[:2_500].astype(np.int32)))
    blocks = singles.batch(700)
    unknown = singles.filter(lambda image, label: True)  # no cardinality: counted
    for ds in (singles, blocks, unknown):
        examples = data.as_examples(ds, "a test dataset")
        assert examples.count == 2_500 and examples.origin == "a test dataset"
        got_images, got_labels = data.to_numpy(examples)
        assert got_labels.dtype == np.int64
        np.testing.assert_array_equal(got_images, images[:2_500])
        np.testing.assert_array_equal(got_labels, labels[:2_500])


@pytest.mark.parametrize(
    "name, magic, dims, payload, message",
    [
        ("t10k-images-idx3-ubyte.gz", 0x801, (10_000, 28, 28), b"", "magic number 0x00000801"),
        ("t10k-images-idx3-ubyte.gz", 0x803, (10_000, 32, 32), bytes(10_000 * 32 * 32), "32x32"),
        ("t10k-images-idx3-ubyte.gz", 0x803, (9_999, 28, 28), bytes(9_999 * 784), "holds 9999 items"),
        ("t10k-labels-idx1-ubyte.gz", 0x801, (10_000,), bytes(5_000), "truncated or corrupt"),
    ],
)
def test_idx_header_problems_name_the_file(raw_copy, name, magic, dims, payload, message):
    write_idx(raw_copy / name, magic, dims, payload)
    with pytest.raises(data.DataError, match=message) as error:
        data.load_split("test", "idx", raw_dir=raw_copy)
    assert name in str(error.value)


def test_truncated_gzip_is_reported(raw_copy):
    path = raw_copy / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte.gz.*(truncated|gzip)"):
        data.load_split("test", "idx", raw_dir=raw_copy)


@pytest.mark.parametrize("source", data.SOURCES)
def test_missing_file_says_which_and_how_to_fix(raw_copy, tmp_path, source):
    (raw_copy / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(data.DataError, match="train-labels-idx1-ubyte.gz: file missing: restore"):
        data.load_split("train", source, raw_dir=raw_copy, tfds_dir=str(tmp_path / "tfds"))


def test_corrupted_copy_fails_tfds_checksum_and_our_check(raw_copy, tmp_path):
    path = raw_copy / "t10k-labels-idx1-ubyte.gz"
    # A valid gzip of different labels: only a checksum can tell.
    labels = parse_idx(path).copy()
    labels[0] = (labels[0] + 1) % 10
    with gzip.open(path, "wb") as f:
        f.write(b"\x00\x00\x08\x01" + (10_000).to_bytes(4, "big") + labels.tobytes())
    for source in data.SOURCES:
        with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte.gz: SHA-256 .* differs from the checksum TFDS"):
            data.load_split("test", source, raw_dir=raw_copy, tfds_dir=str(tmp_path / "tfds"))


def test_unknown_source_and_split_are_rejected():
    with pytest.raises(ValueError, match="unknown source 'csv'"):
        data.load_split("train", "csv")
    with pytest.raises(ValueError, match="unknown split 'val'"):
        data.load_split("val", "idx")
