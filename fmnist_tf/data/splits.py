"""The seeded train/validation split of the training examples (48,000 / 12,000 of Fashion-MNIST's 60,000)."""

import numpy as np
import tensorflow as tf

from fmnist_tf.data.files import DEFAULT_RAW_DIR
from fmnist_tf.data.sources import Examples, load_examples, plain_function

VALIDATION_FRACTION = 0.2


def validation_mask(seed, total, fraction=VALIDATION_FRACTION):
    """Boolean [total] array, True for the ``round(fraction * total)`` examples the seed holds out."""
    mask = np.zeros(total, dtype=bool)
    mask[np.random.default_rng(seed).permutation(total)[: round(fraction * total)]] = True
    return mask


def select(examples, keep):
    """The examples at the True positions of ``keep`` (bool [count]), streamed block by block, order kept."""
    if len(keep) != examples.count:
        raise ValueError(f"a mask of {len(keep)} for {examples.count} examples")
    keep_t = tf.constant(keep)

    @plain_function
    def pick(offset, block):
        images, labels = block
        end = offset + tf.shape(labels, out_type=tf.int64)[0]
        kept = keep_t[offset:end]
        return end, (tf.boolean_mask(images, kept), tf.boolean_mask(labels, kept))

    blocks = examples.blocks.scan(tf.constant(0, tf.int64), pick)
    return Examples(blocks, int(np.sum(keep)), examples.origin, examples.block)


def split_train_validation(examples, seed):
    """(train, validation) ``Examples``: the seed's ``validation_mask`` over ``examples``, each in their order."""
    mask = validation_mask(seed, examples.count)
    return select(examples, ~mask), select(examples, mask)


def load_splits(seed, source="tfds", raw_dir=DEFAULT_RAW_DIR, tfds_dir=None):
    """{"train", "validation", "test"} -> ``Examples`` of ``source``, the first two split by ``seed``."""
    train, validation = split_train_validation(load_examples("train", source, raw_dir, tfds_dir), seed)
    return {"train": train, "validation": validation, "test": load_examples("test", source, raw_dir, tfds_dir)}
