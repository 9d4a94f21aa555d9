"""The door to `fmnist_tf.cli.export_lite` (also installed as `fmnist-export-lite`): flags and behaviour are there."""

from fmnist_tf.cli import export_lite

if __name__ == "__main__":
    export_lite.run()
