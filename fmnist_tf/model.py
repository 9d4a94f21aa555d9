"""The Keras models: each maps the normalized [None, 784] float32 vector to 10 class probabilities."""

import keras

from fmnist_tf.data import NUM_CLASSES, NUM_PIXELS

MODELS = ("softmax",)
OPTIMIZERS = ("rmsprop", "adam", "sgd")


def build_model(name="softmax"):
    """An uncompiled Keras model by name; "softmax" is the notebook's one Dense(10, softmax) layer."""
    if name != "softmax":
        raise ValueError(f"unknown model {name!r}: expected one of {', '.join(MODELS)}")
    return keras.Sequential(
        [keras.Input((NUM_PIXELS,), name="pixels"), keras.layers.Dense(NUM_CLASSES, activation="softmax")],
        name=name,
    )


def compile_model(model, optimizer="rmsprop", learning_rate=None, steps_per_execution=1, jit_compile="auto"):
    """Compile with sparse categorical cross-entropy and accuracy; learning_rate None keeps Keras's default."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}: expected one of {', '.join(OPTIMIZERS)}")
    kwargs = {} if learning_rate is None else {"learning_rate": learning_rate}
    model.compile(
        optimizer=keras.optimizers.get({"class_name": optimizer, "config": kwargs}),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
        jit_compile=jit_compile,
    )
    return model
