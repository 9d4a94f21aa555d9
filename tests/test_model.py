import numpy as np
import pytest
import tensorflow as tf

from fmnist_tf import data, training
from fmnist_tf import model as model_lib


def test_softmax_is_one_dense_layer_on_784_inputs():
    model = model_lib.build_model("softmax")
    assert model.input_shape == (None, 784) and model.output_shape == (None, 10)
    assert model.count_params() == 784 * 10 + 10
    probabilities = model.predict(np.random.default_rng(0).random((5, 784), np.float32), verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)


def test_optimizer_by_name_with_keras_default_learning_rate():
    optimizer = model_lib.make_optimizer("sgd", learning_rate=0.25)
    assert type(optimizer).__name__ == "SGD" and float(optimizer.learning_rate) == 0.25
    default = model_lib.make_optimizer()
    assert type(default).__name__ == "RMSprop" and float(default.learning_rate) == pytest.approx(1e-3)


def test_a_learning_rate_decay_multiplies_the_rate_by_it_every_epoch():
    optimizer = model_lib.make_optimizer("adam", decay=0.5, steps_per_epoch=10)
    rates = []
    for step in (0, 5, 10, 20):
        optimizer.iterations.assign(step)  # a function of the step count alone, which checkpoints hold
        rates.append(float(optimizer.learning_rate))
    assert rates == pytest.approx([1e-3, 1e-3 * 0.5**0.5, 5e-4, 2.5e-4])


def test_batch_norm_statistics_are_variables_the_checkpoint_holds():
    model = model_lib.build_model("cnn_bn")
    names = [v.path for v in model.non_trainable_variables]
    assert sum("moving_mean" in n for n in names) == sum("moving_variance" in n for n in names) == 2
    assert all(layer.synchronized for layer in model.layers if type(layer).__name__ == "BatchNormalization")


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        model_lib.build_model("resnet")
    with pytest.raises(ValueError, match="unknown optimizer 'lbfgs'"):
        model_lib.make_optimizer("lbfgs")


@pytest.mark.parametrize(
    "name, hidden",
    [
        ("mlp", ["Dense", "ReplicaDropout"]),
        ("cnn", ["Reshape", "Conv2D", "MaxPooling2D"]),
        ("cnn_bn", ["Reshape", "Conv2D", "MaxPooling2D", "Conv2D", "BatchNormalization", "ReLU"]),
    ],
)
def test_every_model_maps_784_pixels_to_10_probabilities(name, hidden):
    model = model_lib.build_model(name)
    assert model.input_shape == (None, 784) and model.output_shape == (None, 10)
    assert model.inputs[0].name == "pixels"
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds[: len(hidden)] == hidden and kinds[-1] == "Dense"
    assert model.layers[-1].units == 10 and model.count_params() > 784 * 10 + 10
    probabilities = model.predict(np.random.default_rng(0).random((5, 784), np.float32), verbose=0)
    assert probabilities.shape == (5, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)


@pytest.fixture(scope="module")
def small_splits():
    return {name: examples.blocks.unbatch().take(2000) for name, examples in data.load_splits(seed=0, source="idx").items()}


@pytest.mark.parametrize("name", ["mlp", "cnn", "cnn_bn"])
def test_a_short_real_run_exports_the_three_signatures(name, small_splits, tmp_path):
    export_dir = str(tmp_path / "fashion_mnist")
    # Batches of 32 for batch norm: the moving statistics that evaluation uses need more than 16 steps to settle.
    batch_size = 32 if name == "cnn_bn" else None
    config = training.Config(model=name, epochs=1, batch_size=batch_size, source="idx", export_dir=export_dir,
                             verbose=False)  # fmt: skip
    figures = training.run(config, datasets=small_splits)
    assert figures["val_accuracy"] > 0.5  # one epoch of 2,000 real examples: far above chance (0.1)
    signatures = tf.saved_model.load(figures["export_path"]).signatures
    assert set(signatures) == {"serving_default", "serving_normalized", "serving_png"}
    # The export is the trained model: served on the test images, it scores what training measured.
    images, labels = data.to_numpy(small_splits["test"])
    parts = [signatures["serving_default"](images=tf.constant(images[i : i + 1000])) for i in (0, 1000)]
    served = {key: np.concatenate([part[key].numpy() for part in parts]) for key in ("probabilities", "class_id")}
    assert served["probabilities"].shape == (2000, 10)
    assert np.mean(served["class_id"] == labels) == pytest.approx(figures["test_accuracy"])
    normalized = signatures["serving_normalized"](pixels=data.normalize(images[:8]))
    np.testing.assert_allclose(normalized["probabilities"], served["probabilities"][:8], atol=1e-6)
