"""The Keras models and optimizers: each model maps the normalized [None, 784] vector to 10 probabilities.

Every model takes the same input ("pixels", float32 [None, 784]) and ends in Dense(10, softmax), so the
pipelines and the three serving signatures are the same whichever model is trained.
"""

import keras

from fmnist_tf.configs import MODELS, OPTIMIZERS
from fmnist_tf.data.files import IMAGE_SHAPE, NUM_CLASSES, NUM_PIXELS


def _softmax_layers():
    return []


def _mlp_layers():
    return [keras.layers.Dense(100, activation="relu"), keras.layers.Dropout(0.2)]


def _cnn_layers():
    # The flat input is the one serving and the pipelines share; the convolutions need it as an image again.
    return [
        keras.layers.Reshape((*IMAGE_SHAPE, 1)),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dropout(0.5),
    ]


# Name -> the hidden layers between the input and the Dense(10, softmax) output.
_HIDDEN_LAYERS = {"softmax": _softmax_layers, "mlp": _mlp_layers, "cnn": _cnn_layers}


def build_model(name="softmax"):
    """A Keras model by name, from the normalized [None, 784] "pixels" input to 10 probabilities.

    "softmax" is the notebook's one Dense(10, softmax) layer; "mlp" adds Dense(100, relu) and Dropout;
    "cnn" is a small conv net (two Conv2D/MaxPooling2D blocks, Dense(128, relu), Dropout).
    """
    if name not in _HIDDEN_LAYERS:
        raise ValueError(f"unknown model {name!r}: expected one of {', '.join(MODELS)}")
    return keras.Sequential(
        [
            keras.Input((NUM_PIXELS,), name="pixels"),
            *_HIDDEN_LAYERS[name](),
            keras.layers.Dense(NUM_CLASSES, activation="softmax"),
        ],
        name=name,
    )


def make_optimizer(name="rmsprop", learning_rate=None):
    """A Keras optimizer by name; learning_rate None keeps Keras's default (1e-3 for rmsprop, as compile)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}: expected one of {', '.join(OPTIMIZERS)}")
    kwargs = {} if learning_rate is None else {"learning_rate": learning_rate}
    return keras.optimizers.get({"class_name": name, "config": kwargs})
