"""Serving latency and throughput: the exported SavedModel's ``serving_default`` against ``model.predict`` on the
same images, and the batch-1 latency of its LiteRT float32 and int8 conversions."""

import tempfile

import tensorflow as tf

from fmnist_tf import data
from fmnist_tf.serving import export, layout, lite, signatures

from timing import latencies_ms


def bench_serving(model, test_images):
    """serving_default of the exported SavedModel against model.predict, same inputs."""
    with tempfile.TemporaryDirectory() as tmp:
        path = export.export_saved_model(model, f"{tmp}/fashion_mnist")
        serve = tf.saved_model.load(str(path)).signatures[signatures.SERVING_DEFAULT]
        one, batch, everything = (tf.constant(test_images[:n]) for n in (1, signatures.MAX_BATCH, len(test_images)))
        # The whole test set goes as the package's clients send it: requests of layout.REQUEST_IMAGES.
        parts = list(layout.request_batches(everything))
        p50, p99 = latencies_ms(lambda: serve(images=one), calls=500)
        batch_ms, _ = latencies_ms(lambda: serve(images=batch), calls=30, warmup=3)
        all_ms, _ = latencies_ms(lambda: [serve(images=part) for part in parts], calls=10, warmup=2)
    pixels_one, pixels_batch, pixels_all = (data.normalize(x) for x in (one, batch, everything))
    predict_p50, predict_p99 = latencies_ms(lambda: model.predict(pixels_one, verbose=0), calls=100, warmup=5)
    predict_batch_ms, _ = latencies_ms(lambda: model.predict(pixels_batch, verbose=0), calls=20, warmup=2)
    predict_all_ms, _ = latencies_ms(lambda: model.predict(pixels_all, verbose=0), calls=5, warmup=1)
    return {
        "serving_p50_ms_batch1": p50,
        "serving_p99_ms_batch1": p99,
        "serving_images_per_s_batch1024": len(batch) / batch_ms * 1e3,
        "serving_images_per_s_all_test": len(test_images) / all_ms * 1e3,
        "predict_p50_ms_batch1": predict_p50,
        "predict_p99_ms_batch1": predict_p99,
        "predict_images_per_s_batch1024": len(batch) / predict_batch_ms * 1e3,
        "predict_images_per_s_all_test": len(test_images) / predict_all_ms * 1e3,
    }


def bench_lite(model, train_images, test_images):
    """Batch-1 latency of the model's LiteRT float32 and int8 conversions, measured as bench_serving measures
    the SavedModel signature (same image, calls and warmup)."""
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        version = export.export_saved_model(model, f"{tmp}/fashion_mnist")
        paths, _ = lite.write_models(version, f"{tmp}/lite", lite.representative_images(train_images))
        one = {lite.INPUT_NAME: test_images[:1]}
        for kind, path in paths.items():
            runner = lite.load_lite_model(path)
            p50, p99 = latencies_ms(lambda: runner(**one), calls=500)
            figures[f"lite_{kind}_p50_ms_batch1"], figures[f"lite_{kind}_p99_ms_batch1"] = p50, p99
    return figures
