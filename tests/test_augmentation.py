import numpy as np
import pytest
import tensorflow as tf

from fmnist_tf import data


def _transforms(image, max_shift=data.MAX_SHIFT):
    """Every flip and shift ``augment`` may draw for ``image`` (uint8 [28, 28]): {(flipped, dy, dx): image}."""
    padded = {
        flip: np.pad(np.fliplr(image) if flip else image, max_shift) for flip in (False, True)
    }
    span = range(2 * max_shift + 1)
    return {(flip, dy, dx): padded[flip][dy : dy + 28, dx : dx + 28] for flip in padded for dy in span for dx in span}


def _drawn(original, augmented):
    """Which transform of ``original`` each ``augmented`` image is (None where it is none of them)."""
    drawn = []
    for image, result in zip(original, augmented, strict=True):
        matches = [t for t, candidate in _transforms(image).items() if np.array_equal(candidate, result)]
        drawn.append(matches[0] if matches else None)
    return drawn


@pytest.fixture(scope="module")
def test_images():
    images, labels = data.to_numpy(data.load_examples("test", "idx"))
    return images[:2000], labels[:2000]


def test_augment_flips_and_shifts_each_example_by_its_key(test_images):
    images = test_images[0][:400]
    key = data.window_key(7, 3)
    augmented = data.augment(images, key).numpy()
    assert augmented.dtype == np.uint8 and augmented.shape == images.shape
    np.testing.assert_array_equal(augmented, data.augment(images, key).numpy())  # same key, same bits
    drawn = _drawn(images, augmented)
    assert None not in drawn
    # Each example its own draw: flips about half the time, every shift of -2..2 on each axis.
    assert 150 < sum(flip for flip, _, _ in drawn) < 250
    assert {dy for _, dy, _ in drawn} == {dx for _, _, dx in drawn} == set(range(5))
    other = data.augment(images, data.window_key(7, 4)).numpy()
    assert np.mean(np.all(other == augmented, axis=(1, 2))) < 0.2


def test_training_data_augments_deterministically_per_seed_and_epoch_keeping_labels(test_images):
    examples = data.as_examples(tf.data.Dataset.from_tensor_slices(test_images).batch(500), "the test images")

    def epochs(augment, **kwargs):
        chunks = data.training_data(examples, 64, 5, range(2), augment=augment, **kwargs)
        x, y = (np.concatenate(part) for part in zip(*[(x.numpy(), y.numpy()) for x, y in chunks]))
        return x.reshape(2, -1, 28, 28), y.reshape(2, -1)

    x, y = epochs(True)
    plain_x, plain_y = epochs(False)
    np.testing.assert_array_equal(y, plain_y)  # the same examples in the same order: only the pixels change
    again_x, again_y = epochs(True)
    np.testing.assert_array_equal(x, again_x)
    np.testing.assert_array_equal(y, again_y)
    # Normalized after augmenting: each training image is a flip or shift of the unaugmented one.
    pixels, plain_pixels = (np.rint(a * 255).astype(np.uint8) for a in (x, plain_x))
    for epoch in range(2):
        drawn = _drawn(plain_pixels[epoch], pixels[epoch])
        assert None not in drawn
        assert sum(t == (False, 2, 2) for t in drawn) < 0.1 * len(drawn)  # most are changed
    # Another epoch, other draws (epoch 1 holds the examples in another order: compare them example by example).
    order = [data.epoch_order(2000, 5, epoch).numpy() for epoch in range(2)]
    by_example = [pixels[epoch][np.argsort(order[epoch])] for epoch in range(2)]
    assert np.mean(np.all(by_example[0] == by_example[1], axis=(1, 2))) < 0.2
    # Under two replicas the chunks are augmented before they are cut: together they hold one machine's pixels.
    # 2,000 examples: one chunk an epoch, one element per replica, its 32-row slices of the 31 whole batches.
    slices = [x.numpy() for x, _ in data.training_data(examples, 64, 5, range(2), replicas=2, augment=True)]
    for epoch in range(2):
        both = np.stack(slices[2 * epoch : 2 * epoch + 2]).reshape(2, 31, 32, 784)
        np.testing.assert_array_equal(both.transpose(1, 0, 2, 3).reshape(-1, 784), x[epoch, :1984].reshape(-1, 784))


def test_evaluation_data_is_never_augmented(test_images):
    examples = data.as_examples(tf.data.Dataset.from_tensor_slices(test_images).batch(500), "the test images")
    x = np.concatenate([x.numpy() for x, _ in data.evaluation_data(examples)])
    np.testing.assert_array_equal(x, data.normalize(test_images[0]).numpy())
