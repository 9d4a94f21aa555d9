"""What a version answers: its three serving signatures, the checks each runs on a request before the model, and
the warmup requests that exercise them.

Every signature ends in the Keras model with ``data.normalize`` in the graph, so a client sends pixels as they
are and training and serving cannot drift apart. A request the model must not see (too many images, pixels
outside [0, 1], a PNG that is not 28x28 grayscale or would inflate past its size) fails in an Assert op whose
name and message say what was expected; the server keeps serving.
"""

import numpy as np
import tensorflow as tf

from fmnist_tf.data import CLASS_NAMES, IMAGE_SHAPE, NUM_PIXELS, normalize
from fmnist_tf.serving import layout

# Signature names and their input names: what TF Serving clients put in their requests.
SERVING_DEFAULT = layout.DEFAULT_SIGNATURE  # uint8 [None, 28, 28] raw pixels: what a request naming none gets
SERVING_NORMALIZED = "serving_normalized"  # float32 [None, 784], the notebook model's own input
SERVING_PNG = "serving_png"  # string [None] encoded 28x28 grayscale PNGs ({"b64": ...} over REST)
SIGNATURE_INPUTS = {SERVING_DEFAULT: "images", SERVING_NORMALIZED: "pixels", SERVING_PNG: "png_bytes"}
# Every signature refuses a request of more images than this: one request must not hold a core, or hundreds of
# MB, for long (clients split larger batches).
MAX_BATCH = 1024
MAX_PNG_BATCH = MAX_BATCH
# A 28x28 8-bit grayscale PNG holds 812 bytes of pixel data (28 rows of a filter byte and 28 pixels), ~900 bytes
# stored uncompressed; more than this per PNG, or per request, is refused before any is decompressed (a zlib
# bomb inside a valid 28x28 header would otherwise be inflated in full).
MAX_PNG_BYTES = 4096
MAX_PNG_REQUEST_BYTES = 2 * 1024 * 1024
# A PNG opens with its 8-byte signature and the IHDR chunk (length 13, "IHDR"), then width and height
# (big-endian uint32), bit depth and colour type: the first 26 bytes say what decode_png would allocate.
_PNG_SIGNATURE_AND_IHDR = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR"
_PNG_HEADER_BYTES = 26
_PNG_ACCEPTED = (*IMAGE_SHAPE[::-1], 8, 0)  # width, height, bit depth 8, colour type 0 (grayscale)


def _outputs(probabilities):
    class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
    class_name = tf.gather(tf.constant(CLASS_NAMES), class_id)
    return {layout.PROBABILITIES: probabilities, layout.CLASS_ID: class_id, layout.CLASS_NAME: class_name}


def _png_headers(png_bytes):
    """int64 [n, 4]: each PNG's width, height, bit depth and colour type from its IHDR; -1s for a non-PNG."""
    # fixed_length reads only the first bytes of each string (zero-padded when shorter): no decoding.
    head = tf.cast(tf.io.decode_raw(png_bytes, tf.uint8, fixed_length=_PNG_HEADER_BYTES), tf.int64)
    is_png = tf.reduce_all(tf.equal(head[:, :16], list(_PNG_SIGNATURE_AND_IHDR)), axis=1)
    weights = tf.constant([2**24, 2**16, 2**8, 1], tf.int64)
    fields = tf.stack(
        [tf.reduce_sum(head[:, 16:20] * weights, 1), tf.reduce_sum(head[:, 20:24] * weights, 1), head[:, 24], head[:, 25]],
        axis=1,
    )
    return tf.where(is_png[:, None], fields, tf.constant(-1, tf.int64))


def _checked(values, condition, message, name):
    """``values`` once ``condition`` holds; else InvalidArgumentError from an Assert op called ``name``."""
    with tf.control_dependencies([tf.debugging.Assert(condition, message, summarize=4, name=name)]):
        return tf.identity(values)


def _check_batch(values, signature, noun):
    count = tf.shape(values)[0]
    return _checked(
        values, count <= MAX_BATCH, [f"batch_too_large: {signature} takes at most {MAX_BATCH} {noun} a request, got", count],
        "batch_too_large",
    )  # fmt: skip


def _check_pixels(pixels):
    """``pixels`` once every value is finite and in [0, 1], the range ``normalize`` gives (refused, not clipped:
    a value outside it means the client normalized otherwise, and its answers would be wrong)."""
    finite = tf.math.is_finite(pixels)
    pixels = _checked(
        pixels, tf.reduce_all(finite),
        ["pixels_must_be_finite: serving_normalized takes finite pixels in [0, 1]; NaN or inf at (row, column):",
         tf.where(tf.logical_not(finite))[:1]],
        "pixels_must_be_finite",
    )  # fmt: skip
    outside = tf.logical_or(pixels < 0, pixels > 1)
    return _checked(
        pixels, tf.logical_not(tf.reduce_any(outside)),
        ["pixels_must_be_in_0_to_1: serving_normalized takes pixels in [0, 1] (uint8 / 255); at (row, column), value:",
         tf.where(outside)[:1], tf.boolean_mask(pixels, outside)[:1]],
        "pixels_must_be_in_0_to_1",
    )  # fmt: skip


def _check_pngs(png_bytes):
    """``png_bytes``, once the batch is at most MAX_PNG_BATCH, no PNG is longer than MAX_PNG_BYTES nor all together
    longer than MAX_PNG_REQUEST_BYTES, and every header is a 28x28 8-bit grayscale PNG. Each check runs after
    the one before, so a request gets the first reason that applies.

    Checked before decode_png: a small PNG may declare 2^31 x 2^31 pixels, which decode_png would allocate.
    """
    count = tf.size(png_bytes)
    png_bytes = _checked(
        png_bytes, count <= MAX_PNG_BATCH,
        [f"png_batch_too_large: serving_png takes at most {MAX_PNG_BATCH} PNGs a request, got", count],
        "png_batch_too_large",
    )  # fmt: skip
    lengths = tf.strings.length(png_bytes)
    too_long = lengths > MAX_PNG_BYTES
    png_bytes = _checked(
        png_bytes, tf.logical_not(tf.reduce_any(too_long)),
        [f"png_too_large: serving_png takes PNGs of at most {MAX_PNG_BYTES} bytes; refused (index; bytes):",
         tf.where(too_long)[:1], tf.boolean_mask(lengths, too_long)[:1]],
        "png_too_large",
    )  # fmt: skip
    total = tf.reduce_sum(tf.cast(lengths, tf.int64))
    png_bytes = _checked(
        png_bytes, total <= MAX_PNG_REQUEST_BYTES,
        [f"png_request_too_large: serving_png takes at most {MAX_PNG_REQUEST_BYTES} bytes of PNGs a request, got",
         total],
        "png_request_too_large",
    )  # fmt: skip
    headers = _png_headers(png_bytes)
    refused = tf.logical_not(tf.reduce_all(tf.equal(headers, list(_PNG_ACCEPTED)), axis=1))
    return _checked(
        png_bytes, tf.logical_not(tf.reduce_any(refused)),
        [
            "png_must_be_28x28_8bit_grayscale: serving_png takes 28x28 8-bit grayscale PNGs; refused "
            "(index; width, height, bit depth, colour type; -1 if not a PNG):",
            tf.where(refused)[:1],
            tf.boolean_mask(headers, refused)[:1],
        ],
        "png_must_be_28x28_8bit_grayscale",
    )


def _decode_png(png):
    # The header check made it a 28x28 8-bit grayscale PNG: one channel, 28x28.
    return tf.reshape(tf.io.decode_png(png, channels=1), IMAGE_SHAPE)


def serving_functions(model):
    """Signature name -> tf.function, each ending in the Keras model with preprocessing in the graph."""

    # autograph=False: there is no Python control flow on tensors in these functions, and converting their
    # source was a large share of the export's time (the main job pays it every run).
    @tf.function(input_signature=[tf.TensorSpec([None, *IMAGE_SHAPE], tf.uint8, name="images")], autograph=False)
    def serve_images(images):
        # ensure_shape: a bad request fails here with the expected shape in the message, not deep inside.
        images = tf.ensure_shape(images, [None, *IMAGE_SHAPE], name="images_must_be_batch_x_28_x_28")
        images = _check_batch(images, SERVING_DEFAULT, "images")
        return _outputs(model(normalize(images), training=False))

    @tf.function(input_signature=[tf.TensorSpec([None, NUM_PIXELS], tf.float32, name="pixels")], autograph=False)
    def serve_normalized(pixels):
        pixels = tf.ensure_shape(pixels, [None, NUM_PIXELS], name="pixels_must_be_batch_x_784")
        pixels = _check_pixels(_check_batch(pixels, SERVING_NORMALIZED, "images"))
        return _outputs(model(pixels, training=False))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="png_bytes")], autograph=False)
    def serve_png(png_bytes):
        images = tf.map_fn(
            _decode_png, _check_pngs(png_bytes), fn_output_signature=tf.TensorSpec(IMAGE_SHAPE, tf.uint8)
        )
        return _outputs(model(normalize(images), training=False))

    return {SERVING_DEFAULT: serve_images, SERVING_NORMALIZED: serve_normalized, SERVING_PNG: serve_png}


def encode_png(image):
    """uint8 [28, 28] array -> PNG bytes, the format the serving_png signature takes."""
    return tf.io.encode_png(tf.expand_dims(tf.convert_to_tensor(image, tf.uint8), -1)).numpy()


def warmup_requests(model_name, images):
    """One PredictionLog per signature for ``images`` (uint8 [n, 28, 28]), as TF Serving replays them."""
    from tensorflow_serving.apis import prediction_log_pb2

    images = np.asarray(images, dtype=np.uint8)
    inputs = {
        SERVING_DEFAULT: images,
        SERVING_NORMALIZED: normalize(images).numpy(),
        SERVING_PNG: np.array([encode_png(image) for image in images], dtype=object),
    }
    return [
        prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(
                request=layout.predict_request(signature, {SIGNATURE_INPUTS[signature]: value}, model_name)
            )
        )
        for signature, value in inputs.items()
    ]
