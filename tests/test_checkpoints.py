"""A checkpoint holds every variable (the Dropout's seed state too), and the epochs it completed read back."""

import numpy as np
import tensorflow as tf

from conftest import built_model_and_optimizer
from fmnist_tf.training import checkpoints
from fmnist_tf.training.checkpoints import Checkpoints


def test_a_checkpoint_restores_every_variable_including_dropout_seed_state(tmp_path):
    model, optimizer = built_model_and_optimizer()
    for i, variable in enumerate([*model.variables, *optimizer.variables]):
        variable.assign(tf.cast(tf.fill(variable.shape, i + 1), variable.dtype))
    (seed_state,) = [v for v in model.non_trainable_variables if "seed_generator" in v.path]
    history = {k: [0.5] for k in checkpoints.HISTORY_KEYS}
    Checkpoints(str(tmp_path), model, optimizer, chief=True).save(1, history)

    fresh_model, fresh_optimizer = built_model_and_optimizer()
    start, restored_history = Checkpoints(str(tmp_path), fresh_model, fresh_optimizer, chief=True).restore()
    assert start == 1 and restored_history == history
    for saved, restored in zip([*model.variables, *optimizer.variables],
                               [*fresh_model.variables, *fresh_optimizer.variables]):  # fmt: skip
        np.testing.assert_array_equal(saved.numpy(), restored.numpy(), err_msg=saved.path)
    assert seed_state.numpy().tolist() == [3, 3]  # the Dropout's generator state, a non-trainable variable
    assert checkpoints.completed_epochs(str(tmp_path)) == 1
