"""ONNX export from every backend, and onnxruntime as a fifth runtime for the parity harness.

* :func:`densenet_multi.export.api.export_onnx` / ``densenet-multi export --format onnx
  SRC OUT.onnx [--backend B]``: a canonical checkpoint to a verified ONNX file, through
  the backend's own exporter, in the backend's environment;
* ``densenet_multi/<framework>/onnx_export.py``: ``to_onnx(model)``, one per backend
  (torch.onnx.export with the dynamo exporter, jax2onnx, Keras's ``Model.export``
  with tf2onnx, ``mxnet.onnx.export_model``);
* :mod:`.graph`: what every exported graph looks like (input ``x``, NCHW, dynamic
  batch / height / width; one output per stage; metadata), the onnxruntime session;
* :mod:`.ort_backend`: an exported graph in onnxruntime as a parity-harness backend
  (``--backends onnx-torch=densenet_multi.export.ort_backend:torch``);
* :mod:`.checks`, :mod:`.faults`: the checks the four backends' tests share, and the
  deliberate faults that show them failing.

This package's core (``api``, ``cli``) imports no framework and no onnx; ``graph``,
``checks``, ``faults`` and ``ort_backend`` need ``onnx`` / ``onnxruntime``, installed
in every backend's environment (the framework extras of pyproject.toml).
"""
