"""The d2l chapter's four tabs and the blogs built on it, rebuilt as their sources write
them and run through the parity harness (docs/textbook.md).

One module per source network, written in that source's framework and structure,
framework defaults included; each ends with its fix chain, ``backend`` (the source as
written) then ``fix_*`` objects (the link before plus one change), listed in the
module's ``CHAIN`` constant. Every object offers the backend contract
(:mod:`densenet_multi.backend`), so the harness runs it in a worker of its framework's
environment (``--backends NAME=densenet_multi.textbook.<module>:<object>``):

==========================  ==========  =====================================================
module                      framework   source
==========================  ==========  =====================================================
``d2l_pytorch``             PyTorch     the chapter's PyTorch tab (seed 000)
``d2l_mxnet``               MXNet       the chapter's MXNet tab (000), Gluon numpy mode
``d2l_jax``                 JAX         the chapter's JAX tab (000), Flax linen
``d2l_tensorflow``          TensorFlow  the chapter's TensorFlow tab (000), tf.keras = Keras 3
``blog_001_d2l121``         PyTorch     the PyTorch-tab walk-through (001): the chapter's
                                        net, and the DenseNet-121 it builds on it
``blog_002_korean``         PyTorch     the Korean DenseNet-121 blog (002)
``blog_003_keras``          TensorFlow  the Keras DenseNet-121 blog (003)
``blog_004_torchvision``    PyTorch     the torchvision walk-through (004)
==========================  ==========  =====================================================

:mod:`.catalog` lists them with their cases (and reads each chain from its module's
source, importing no framework); :mod:`.report` runs them all in one harness run and
writes the guide's table and figure (``python -m densenet_multi.textbook.report --out
DIR``). ``_common`` (framework-free) pairs a source's layers with the canonical ones;
``_torch`` is the adapter of the PyTorch sources.

Importing this package imports no framework; each reconstruction module imports its own.
"""
