"""The Keras models and optimizers: each model maps the normalized [None, 784] vector to 10 probabilities."""

import keras

from fmnist_tf.data import NUM_CLASSES, NUM_PIXELS

MODELS = ("softmax",)
OPTIMIZERS = ("rmsprop", "adam", "sgd")


def build_model(name="softmax"):
    """A Keras model by name; "softmax" is the notebook's one Dense(10, softmax) layer on 784 inputs."""
    if name != "softmax":
        raise ValueError(f"unknown model {name!r}: expected one of {', '.join(MODELS)}")
    return keras.Sequential(
        [keras.Input((NUM_PIXELS,), name="pixels"), keras.layers.Dense(NUM_CLASSES, activation="softmax")],
        name=name,
    )


def make_optimizer(name="rmsprop", learning_rate=None):
    """A Keras optimizer by name; learning_rate None keeps Keras's default (1e-3 for rmsprop, as compile)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}: expected one of {', '.join(OPTIMIZERS)}")
    kwargs = {} if learning_rate is None else {"learning_rate": learning_rate}
    return keras.optimizers.get({"class_name": name, "config": kwargs})
