"""The Keras models and optimizers: each model maps the normalized [None, 784] vector to 10 probabilities.

Every model takes the same input ("pixels", float32 [None, 784]) and ends in Dense(10, softmax), so the
pipelines and the three serving signatures are the same whichever model is trained.
"""

import keras
import numpy as np
import tensorflow as tf

from fmnist_tf.configs import MODELS, OPTIMIZERS
from fmnist_tf.data.files import IMAGE_SHAPE, NUM_CLASSES, NUM_PIXELS


@keras.saving.register_keras_serializable(package="fmnist_tf")
class ReplicaDropout(keras.layers.Dropout):
    """Keras's Dropout, except that the replicas of a tf.distribute strategy draw one machine's mask.

    With N replicas, each step's global batch is cut into N equal slices, replica r taking slice r
    (``data.training_data``). Keras's Dropout draws a mask of the slice's shape from its seed generator,
    whose state is mirrored: every replica would draw the same mask. Here each replica draws the mask
    one machine draws for the whole global batch (same seed state, same shape, Keras's own sampler) and
    keeps its slice's rows, so N replicas drop exactly the units one machine drops. With one replica
    (or outside training) it is Keras's Dropout, bit for bit.
    """

    def __init__(self, rate, **kwargs):
        if kwargs.get("noise_shape") is not None:
            raise ValueError("ReplicaDropout takes no noise_shape: its mask is cut by rows")
        super().__init__(rate, **kwargs)

    def call(self, inputs, training=False):
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync if context else 1
        if not training or replicas == 1 or self.rate == 0:
            return super().call(inputs, training=training)
        rows = tf.shape(inputs)[0]
        whole_batch = tf.concat([[rows * replicas], tf.shape(inputs)[1:]], axis=0)
        # Keras's dropout of ones: its seed handling and sampler, its mask (0 where a unit is dropped).
        kept = keras.random.dropout(tf.ones(whole_batch, inputs.dtype), self.rate, seed=self.seed_generator) > 0
        first = tf.cast(context.replica_id_in_sync_group, tf.int32) * rows
        # As tf.nn.experimental.stateless_dropout computes it: where(kept, x * 1/(1 - rate), 0).
        scale = tf.constant(1 / (1 - self.rate), inputs.dtype)
        return tf.where(kept[first : first + rows], inputs * scale, tf.zeros((), inputs.dtype))


def _softmax_layers():
    return []


def _mlp_layers():
    return [keras.layers.Dense(100, activation="relu"), ReplicaDropout(0.2)]


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
        ReplicaDropout(0.5),
    ]


def _batch_norm():
    # Synchronized: under several replicas the statistics are the global batch's, as on one machine, at the price
    # of three small all-reduces per layer and step. Momentum 0.9, not Keras's 0.99: the moving statistics that
    # evaluation and serving use then follow the weights within tens of steps, so a short run is scored fairly.
    return keras.layers.BatchNormalization(momentum=0.9, synchronized=True)


def _conv_bn_relu(filters):
    # No bias: batch norm's offset takes its place.
    return [keras.layers.Conv2D(filters, 3, padding="same", use_bias=False), _batch_norm(), keras.layers.ReLU()]


def _cnn_bn_layers():
    return [
        keras.layers.Reshape((*IMAGE_SHAPE, 1)),
        # No batch norm on the 28x28 maps: there it slows every epoch (BUILD_NOTES.md, cnn_bn), time better spent on
        # more epochs.
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        *_conv_bn_relu(64),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(256, use_bias=False),
        _batch_norm(),
        keras.layers.ReLU(),
        # Less than cnn's 0.5: the augmentation regularizes too.
        ReplicaDropout(0.3),
    ]


# Name -> the hidden layers between the input and the Dense(10, softmax) output.
_HIDDEN_LAYERS = {"softmax": _softmax_layers, "mlp": _mlp_layers, "cnn": _cnn_layers, "cnn_bn": _cnn_bn_layers}


def build_model(name="softmax"):
    """A Keras model by name, from the normalized [None, 784] "pixels" input to 10 probabilities.

    "softmax" is the notebook's one Dense(10, softmax) layer; "mlp" adds Dense(100, relu) and Dropout;
    "cnn" is a small conv net (two Conv2D/MaxPooling2D blocks, Dense(128, relu), Dropout); "cnn_bn" the same
    with batch normalization after the second convolution and a Dense(256) (trained with augmentation by default).
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


def make_optimizer(name="rmsprop", learning_rate=None, decay=1.0, steps_per_epoch=1):
    """A Keras optimizer by name; learning_rate None keeps Keras's default (1e-3 for rmsprop, as compile).

    ``decay`` below 1 multiplies the learning rate by it every ``steps_per_epoch`` steps, smoothly step by step
    (Keras's ExponentialDecay): a schedule of the step count alone, which the checkpoint holds, so a resumed
    run and a run given more epochs take the same steps as an uninterrupted one.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}: expected one of {', '.join(OPTIMIZERS)}")
    if decay != 1:
        initial = keras.optimizers.get(name).get_config()["learning_rate"] if learning_rate is None else learning_rate
        learning_rate = keras.optimizers.schedules.ExponentialDecay(initial, steps_per_epoch, decay)
    kwargs = {} if learning_rate is None else {"learning_rate": learning_rate}
    return keras.optimizers.get({"class_name": name, "config": kwargs})


def nonfinite_variables(variables):
    """The paths (or names) of the floating-point ``variables`` that hold a NaN or an infinity: a model whose
    training diverged, which is neither checkpointed nor exported."""
    values = ((getattr(v, "path", None) or v.name, np.asarray(v.numpy())) for v in variables)
    return [name for name, value in values if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all()]
