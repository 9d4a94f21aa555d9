"""The door to `fmnist_tf.cli.evaluate` (also installed as `fmnist-evaluate`): flags and behaviour are there."""

from fmnist_tf.cli import evaluate

if __name__ == "__main__":
    evaluate.run()
