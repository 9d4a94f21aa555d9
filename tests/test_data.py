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
def test_idx_source_reads_the_files_exactly(split):
    images_file, labels_file = data.RAW_FILES[split]
    expected_images = parse_idx(data.DEFAULT_RAW_DIR / images_file)
    expected_labels = parse_idx(data.DEFAULT_RAW_DIR / labels_file)
    # Both IDX readers: streamed by tf.data (load_split) and in memory by NumPy (load_arrays).
    for images, labels in (data.to_numpy(data.load_split(split, "idx")), data.load_arrays(split, "idx")):
        assert images.dtype == np.uint8 and images.shape == (data.SPLIT_SIZES[split], 28, 28)
        assert labels.dtype == np.int64
        file_images, file_labels = data.to_file_order(split, images, labels)
        np.testing.assert_array_equal(file_images, expected_images)
        np.testing.assert_array_equal(file_labels, expected_labels)


@pytest.mark.parametrize("split", ["train", "test"])
def test_tfds_and_idx_yield_the_same_examples_in_the_same_order(split, tfds_dir, tfds_reference):
    tfds_images, tfds_labels = tfds_reference[split]  # TFDS's own decoding, streamed
    idx_images, idx_labels = data.to_numpy(data.load_split(split, "idx"))
    assert len(tfds_labels) == data.SPLIT_SIZES[split]
    assert tfds_labels.dtype == idx_labels.dtype == np.int64
    np.testing.assert_array_equal(tfds_images, idx_images)
    np.testing.assert_array_equal(tfds_labels, idx_labels)
    # In memory, the TFDS source reads its array cache: the same examples again.
    cached_images, cached_labels = data.load_arrays(split, "tfds", tfds_dir=tfds_dir)
    np.testing.assert_array_equal(cached_images, tfds_images)
    np.testing.assert_array_equal(cached_labels, tfds_labels)


def test_normalize_maps_uint8_to_unit_float_flattened():
    images = np.arange(2 * 28 * 28, dtype=np.int64).reshape(2, 28, 28) % 256
    out = data.normalize(images.astype(np.uint8)).numpy()
    assert out.dtype == np.float32 and out.shape == (2, 784)
    np.testing.assert_array_equal(out, (images.reshape(2, 784) / np.float32(255)).astype(np.float32))
    assert out.min() == 0.0 and out.max() == 1.0
    assert data.normalize(np.zeros((28, 28), np.uint8)).shape == (784,)


def _fingerprints(ds):
    images, labels = data.to_numpy(ds)
    return [hashlib.sha1(image.tobytes()).hexdigest() for image in images], labels


def test_in_memory_split_equals_the_streamed_split():
    arrays = data.load_split_arrays(seed=3, source="idx")
    for name, ds in data.load_splits(seed=3, source="idx").items():
        for got, expected in zip(arrays[name], data.to_numpy(ds)):
            np.testing.assert_array_equal(got, expected)


def test_split_is_disjoint_covering_deterministic_and_balanced():
    train_all = data.load_split("train", "idx")
    all_prints, _ = _fingerprints(train_all)
    train, validation = data.split_train_validation(train_all, seed=42)
    train_prints, train_labels = _fingerprints(train)
    val_prints, val_labels = _fingerprints(validation)
    assert len(train_prints) == 48_000 and len(val_prints) == 12_000
    assert not set(train_prints) & set(val_prints)
    assert set(train_prints) | set(val_prints) == set(all_prints)
    for labels in (train_labels, val_labels):
        shares = np.bincount(labels, minlength=10) / len(labels)
        assert np.all(np.abs(shares - 0.1) <= 0.01), shares
    assert _fingerprints(data.split_train_validation(train_all, seed=42)[1])[0] == val_prints
    assert _fingerprints(data.split_train_validation(train_all, seed=7)[1])[0] != val_prints


def _epoch(images, labels, epoch, **kwargs):
    batches = list(data.epoch_batches(images, labels, 32, seed=1, epoch=epoch, **kwargs))
    return np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches]), batches


def test_epoch_tensors_are_a_pure_function_of_seed_and_epoch():
    images, labels = data.to_numpy(data.load_split("test", "idx"))
    (x0, y0), (tail_x, tail_y) = data.epoch_tensors(images, labels, 32, seed=1, epoch=0)
    assert x0.dtype == tf.float32 and x0.shape == (312, 32, 784) and y0.shape == (312, 32)
    assert tail_x.shape == (1, 10_000 - 312 * 32, 784)  # the final partial batch is kept, as Keras does
    again = data.epoch_tensors(images, labels, 32, seed=1, epoch=0)[0][0]
    np.testing.assert_array_equal(x0, again)
    (_, y1), (_, tail_y1) = data.epoch_tensors(images, labels, 32, seed=1, epoch=1)
    epoch0 = np.concatenate([y0.numpy().ravel(), tail_y.numpy().ravel()])
    epoch1 = np.concatenate([y1.numpy().ravel(), tail_y1.numpy().ravel()])
    assert not np.array_equal(epoch0, epoch1) and sorted(epoch0) == sorted(epoch1) == sorted(labels)
    # The epoch's order is a permutation of the examples, normalized the one way.
    order = data.epoch_order(10_000, 1, 0).numpy()
    np.testing.assert_array_equal(x0.numpy().reshape(-1, 784), data.normalize(images[order[: 312 * 32]]).numpy())
    # The training loop's own feed: that order cut into steps of indices (it gathers each step in the graph).
    steps, tail = data.epoch_index_batches(10_000, 32, seed=1, epoch=0)
    assert steps.dtype == tf.int64 and steps.shape == (312, 32) and tail.shape == (1, 10_000 - 312 * 32)
    np.testing.assert_array_equal(np.concatenate([steps.numpy().ravel(), tail.numpy().ravel()]), order)
    assert len(data.epoch_index_batches(9_984, 32, seed=1, epoch=0)) == 1  # no empty tail batch


def test_replica_slices_partition_each_global_batch():
    images, labels = data.to_numpy(data.load_split("test", "idx"))
    whole = data.epoch_tensors(images, labels, 32, seed=1, epoch=3)[0][0].numpy().reshape(-1, 784)
    one, _, batches = _epoch(images, labels, 3)
    np.testing.assert_array_equal(one, whole)  # one slice: the single-replica steps, full batches only
    assert len(batches) == 312
    slices = [_epoch(images, labels, 3, num_slices=4, first_slice=r)[2] for r in range(4)]
    assert all(len(s) == 312 for s in slices) and slices[0][0][0].shape == (8, 784)
    rebuilt = np.concatenate([np.concatenate([slices[r][s][0] for r in range(4)]) for s in range(312)])
    np.testing.assert_array_equal(rebuilt, whole)
    local = _epoch(images, labels, 3, num_slices=4, first_slice=2, local_slices=2)[2]
    np.testing.assert_array_equal(local[1][0], slices[3][0][0])
    with pytest.raises(ValueError, match="not divisible by the 3 replicas"):
        data.epoch_batches(images, labels, 32, 1, 0, num_slices=3)


def test_evaluation_pipeline_keeps_order():
    ds = data.load_split("test", "idx")
    images, labels = data.to_numpy(ds)
    batches = list(data.evaluation_pipeline(ds, batch_size=1000))
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), labels)
    np.testing.assert_array_equal(batches[0][0].numpy(), data.normalize(images[:1000]).numpy())


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
