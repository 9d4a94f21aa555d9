"""Serving: TF Serving's rules (``layout``), the SavedModel export with its signatures (``export``), the C++
loader through TF's C API (``c_api``), the pre-flight checks (``check``) and LiteRT (``lite``).

Nothing is imported here: ``check`` must run under another TensorFlow without the rest of fmnist_tf.
"""
