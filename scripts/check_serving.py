"""The door to `fmnist_tf.cli.check_serving` (also installed as `fmnist-check-serving`): flags and behaviour are there."""

from fmnist_tf.cli import check_serving

if __name__ == "__main__":
    check_serving.run()
