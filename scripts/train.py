"""The door to `fmnist_tf.cli.train` (also installed as `fmnist-train`): flags and behaviour are there."""

from fmnist_tf.cli import train

if __name__ == "__main__":
    train.run()
