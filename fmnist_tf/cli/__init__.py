"""The command-line jobs: one absl main per module, importing TensorFlow only inside ``main`` so that flag
errors and ``--help`` answer at once. ``scripts/<job>.py`` and the installed ``fmnist-<job>`` commands (with
hyphens: ``fmnist-check-serving``) call ``fmnist_tf.cli.<job>.run()``; ``python -m fmnist_tf.cli.<job>`` does too."""
