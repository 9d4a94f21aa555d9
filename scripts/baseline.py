"""The door to `fmnist_tf.cli.baseline` (also installed as `fmnist-baseline`): flags and behaviour are there."""

from fmnist_tf.cli import baseline

if __name__ == "__main__":
    baseline.run()
