import numpy as np
import pytest

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


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        model_lib.build_model("resnet")
    with pytest.raises(ValueError, match="unknown optimizer 'lbfgs'"):
        model_lib.make_optimizer("lbfgs")
