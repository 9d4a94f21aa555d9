"""Serving: TF Serving's rules (``layout``), what a version answers (``signatures``), publishing a version
(``export``), listing it in models.config (``model_config``), the C++ loader through TF's C API (``c_api``), the
pre-flight checks (``check``) and LiteRT (``lite``).

Nothing is imported here: ``check`` must run under another TensorFlow without the rest of fmnist_tf.
"""
