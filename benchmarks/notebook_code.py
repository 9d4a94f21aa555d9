"""The notebook's way, as it was written, for the benchmarks to set beside this package's: its settings, its fit
in this process, and its whole code as a script for a fresh process."""

import time

import keras

EPOCHS, BATCH_SIZE = 5, 32


def notebook_fit(train, validation, seed):
    """The notebook's training, as it was written: float64 arrays, default compile, fit for 5 epochs."""
    keras.utils.set_random_seed(seed)
    (x, y), (xv, yv) = train, validation
    x_train, x_valid = x.reshape(-1, 784) / 255.0, xv.reshape(-1, 784) / 255.0
    model = keras.Sequential([keras.layers.Dense(10, activation="softmax")])
    model.compile(loss="sparse_categorical_crossentropy", optimizer="rmsprop", metrics=["accuracy"])
    start = time.perf_counter()
    # verbose=0: the notebook printed a progress bar, which only adds time to its side.
    history = model.fit(x_train, y, epochs=EPOCHS, batch_size=BATCH_SIZE, validation_data=(x_valid, yv), verbose=0)
    return time.perf_counter() - start, history.history["val_accuracy"][-1]


# The notebook's code as a script: the files loaded as keras.datasets.fashion_mnist.load_data loads them
# (gzip + np.frombuffer), /255., sklearn's split, the one-layer model, compile, fit, evaluate on the test set.
# verbose=0: the notebook printed progress bars, which would only add time to its side.
NOTEBOOK_SCRIPT = """
import gzip, json, sys, time
import numpy as np
import tensorflow as tf
from tensorflow import keras
from sklearn.model_selection import train_test_split


def load_data(folder):
    def read(name, offset):
        with gzip.open(f"{folder}/{name}", "rb") as f:
            return np.frombuffer(f.read(), np.uint8, offset=offset)

    y_train, y_test = read("train-labels-idx1-ubyte.gz", 8), read("t10k-labels-idx1-ubyte.gz", 8)
    x_train = read("train-images-idx3-ubyte.gz", 16).reshape(len(y_train), 28, 28)
    x_test = read("t10k-images-idx3-ubyte.gz", 16).reshape(len(y_test), 28, 28)
    return (x_train, y_train), (x_test, y_test)


(X_train_full, y_train_full), (X_test, y_test) = load_data(sys.argv[1])
X_train_full, X_test = X_train_full.reshape(-1, 784) / 255.0, X_test.reshape(-1, 784) / 255.0
X_train, X_valid, y_train, y_valid = train_test_split(X_train_full, y_train_full, test_size=0.2, random_state=42)
model = keras.Sequential([keras.layers.Dense(10, activation="softmax")])
model.compile(loss="sparse_categorical_crossentropy", optimizer="rmsprop", metrics=["accuracy"])
began = time.perf_counter()
history = model.fit(X_train, y_train, epochs=5, batch_size=32, validation_data=(X_valid, y_valid), verbose=0)
fit_seconds = time.perf_counter() - began
test_loss, test_accuracy = model.evaluate(X_test, y_test, verbose=0)
print(json.dumps({"fit_seconds": fit_seconds, "val_accuracy": history.history["val_accuracy"][-1],
                  "test_accuracy": test_accuracy}))
"""
