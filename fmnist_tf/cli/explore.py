"""A first look at Fashion-MNIST: a grid of training images with their class names, and class counts.

    python scripts/explore.py --out=samples.png [--count=10]
    python scripts/explore.py --out=augmented.png --augmented   (the images, then 3 draws of the augmentation)
"""

from absl import flags

from fmnist_tf.cli import common

AUGMENTED_EPOCHS = 3

flags.DEFINE_string("out", None, "Where to save the PNG grid of training images.", required=True)
flags.DEFINE_integer("count", 10, "How many of the first training images to show.", lower_bound=1, upper_bound=100)
flags.DEFINE_boolean(
    "augmented", False,
    f"Show the images, then {AUGMENTED_EPOCHS} rows of them flipped and shifted by the training augmentation.",
)  # fmt: skip
common.define_seed_flag()
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
    if FLAGS.augmented:
        save_augmented_grid(FLAGS.out, images[: FLAGS.count], labels[: FLAGS.count], FLAGS.seed)
        print(f"saved the first {FLAGS.count} training images and {AUGMENTED_EPOCHS} augmented draws of them "
              f"to {FLAGS.out}: {labels[: FLAGS.count].tolist()}")  # fmt: skip
    else:
        plots.save_image_grid(FLAGS.out, images[: FLAGS.count], labels[: FLAGS.count])
        print(f"saved the first {FLAGS.count} training images to {FLAGS.out}: {labels[: FLAGS.count].tolist()}")
    print(f"{'class':<12}" + "".join(f"{s:>8}" for s in splits))
    counts = {s: np.bincount(labels, minlength=data.NUM_CLASSES) for s, (_, labels) in splits.items()}
    for i, name in enumerate(data.CLASS_NAMES):
        print(f"{name:<12}" + "".join(f"{counts[s][i]:>8}" for s in splits))


def save_augmented_grid(path, images, labels, seed):
    """``images`` titled with their class names, then ``AUGMENTED_EPOCHS`` draws of ``data.augment`` on them (keyed
    by ``seed`` and the draw, as training keys an epoch), rows of at most 10."""
    import numpy as np

    from fmnist_tf import data, plots

    draws = [data.augment(images, data.window_key(seed, epoch)).numpy() for epoch in range(AUGMENTED_EPOCHS)]
    titles = [data.CLASS_NAMES[int(label)] for label in labels]
    titles += [f"draw {epoch + 1}" for epoch in range(AUGMENTED_EPOCHS) for _ in labels]
    all_images = np.concatenate([images, *draws])
    plots.save_image_grid(path, all_images, np.tile(labels, AUGMENTED_EPOCHS + 1), min(len(images), 10), titles)


def run():
    common.run(main)


if __name__ == "__main__":
    run()
