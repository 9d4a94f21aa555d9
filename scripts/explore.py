"""The door to `fmnist_tf.cli.explore` (also installed as `fmnist-explore`): flags and behaviour are there."""

from fmnist_tf.cli import explore

if __name__ == "__main__":
    explore.run()
