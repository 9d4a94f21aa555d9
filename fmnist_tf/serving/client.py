"""A Python client of an export: its ``serving_default`` loaded as TF Serving loads it (``tf.saved_model.load``,
never this package's Keras code), and the classes it returns for images sent in requests as a client sends them.
Evaluation and LiteRT's scoring both read an export through here.
"""

import numpy as np
import tensorflow as tf

from fmnist_tf import storage
from fmnist_tf.serving import layout
from fmnist_tf.serving.signatures import SERVING_DEFAULT, SIGNATURE_INPUTS


def load_serving_default(model_dir):
    """(SavedModel folder, its serving_default signature); ``model_dir`` is a SavedModel folder or a base path
    (``layout.saved_model_folder``). ModelDirError naming the folder when it cannot be loaded or has no such
    signature."""
    version = layout.saved_model_folder(model_dir)
    try:
        loaded = tf.saved_model.load(str(version))
    except (OSError, ValueError, tf.errors.OpError) as e:
        raise layout.ModelDirError(f"{version}: not a loadable SavedModel: {storage.reason(e)}") from e
    signatures = loaded.signatures
    if SERVING_DEFAULT not in signatures:
        raise layout.ModelDirError(
            f"{version}: no {SERVING_DEFAULT} signature (found: {', '.join(signatures) or 'none'})"
        )
    return version, signatures[SERVING_DEFAULT]


def predict_classes(signature, images):
    """The class_id the serving_default ``signature`` returns for each of the uint8 [n, 28, 28] ``images``."""
    input_name = SIGNATURE_INPUTS[SERVING_DEFAULT]
    batches = (
        signature(**{input_name: tf.constant(batch)})[layout.CLASS_ID].numpy()
        for batch in layout.request_batches(images)
    )
    return np.concatenate(list(batches)).astype(np.int64)
