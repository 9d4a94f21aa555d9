"""The door to `fmnist_tf.cli.benchmark` (also installed as `fmnist-benchmark`): flags and behaviour are there."""

from fmnist_tf.cli import benchmark

if __name__ == "__main__":
    benchmark.run()
