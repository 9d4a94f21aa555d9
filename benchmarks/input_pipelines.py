"""Input pipelines: images/s of each of the package's sources and of its training pipeline, against TFDS's Keras
example pipeline, each iterated in Python."""

import statistics
import time

import tensorflow as tf

from fmnist_tf import data
from fmnist_tf.data import decoded

from notebook_code import BATCH_SIZE


def _images_per_second(ds, repeats=1):
    rates = []
    for _ in range(repeats):
        start, count = time.perf_counter(), 0
        for batch in ds:
            count += int(tf.shape(batch[0])[0])
        rates.append(count / (time.perf_counter() - start))
    return rates


def bench_pipelines(tfds_dir, splits, seed=42):
    """Images/s of the package's pipelines and of TFDS's Keras example pipeline, each iterated in Python."""
    import tensorflow_datasets as tfds

    rates = {}
    builder = data.prepare_tfds(data.DEFAULT_RAW_DIR, tfds_dir)
    rates["tfds_records_decoded_per_example"] = _images_per_second(decoded.tfds_blocks(builder, "train"))[0]
    rates["tfds_decoded_copy"] = statistics.median(_images_per_second(splits["train"].blocks, repeats=3))
    rates["idx_files"] = _images_per_second(data.load_examples("train", "idx").blocks)[0]
    rates["package_training_data_epoch"] = statistics.median(
        _images_per_second(data.training_data(splits["train"], BATCH_SIZE, seed, range(1)), repeats=3)
    )

    # TFDS docs/keras_example: map(normalize) -> cache -> shuffle -> batch -> prefetch.
    def normalize_img(image, label):
        return tf.cast(image, tf.float32) / 255.0, label

    canonical = tfds.load(data.TFDS_NAME, split="train", as_supervised=True, data_dir=tfds_dir)
    canonical = (
        canonical.map(normalize_img, num_parallel_calls=tf.data.AUTOTUNE)
        .cache()
        .shuffle(60_000)
        .batch(BATCH_SIZE)
        .prefetch(tf.data.AUTOTUNE)
    )
    first, *cached = _images_per_second(canonical, repeats=3)
    rates["tfds_keras_example_first_epoch"] = first
    rates["tfds_keras_example_cached_epoch"] = statistics.median(cached)
    return {"pipeline_images_per_s": rates}
