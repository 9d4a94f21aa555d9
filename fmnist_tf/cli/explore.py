"""A first look at Fashion-MNIST: a grid of training images with their class names, and class counts.

    python scripts/explore.py --out=samples.png [--count=10]
"""

from absl import flags

from fmnist_tf.cli import common

flags.DEFINE_string("out", None, "Where to save the PNG grid of training images.", required=True)
flags.DEFINE_integer("count", 10, "How many of the first training images to show.", lower_bound=1, upper_bound=100)
common.define_data_flags()
FLAGS = flags.FLAGS


@common.one_line_errors
def main(argv):
    import numpy as np

    from fmnist_tf import data, plots

    common.prepare_data(FLAGS.source, FLAGS.raw_dir, FLAGS.tfds_dir)
    # In the original files' order: their first images are the notebook's first picture.
    splits = {s: data.load_arrays_in_file_order(s, FLAGS.source, FLAGS.raw_dir, FLAGS.tfds_dir) for s in data.RAW_FILES}
    images, labels = splits["train"]
    plots.save_image_grid(FLAGS.out, images[: FLAGS.count], labels[: FLAGS.count])
    print(f"saved the first {FLAGS.count} training images to {FLAGS.out}: {labels[: FLAGS.count].tolist()}")
    print(f"{'class':<12}" + "".join(f"{s:>8}" for s in splits))
    counts = {s: np.bincount(labels, minlength=data.NUM_CLASSES) for s, (_, labels) in splits.items()}
    for i, name in enumerate(data.CLASS_NAMES):
        print(f"{name:<12}" + "".join(f"{counts[s][i]:>8}" for s in splits))


def run():
    common.run(main)


if __name__ == "__main__":
    run()
