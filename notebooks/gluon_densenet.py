# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: DenseNet (MXNet Gluon, tox env mxnet)
#     language: python
#     name: densenet-gluon
# ---

# %% [markdown]
# # DenseNet in MXNet Gluon: the d2l.ai chapter, cell by cell
#
# The DenseNet chapter of *Dive into Deep Learning* (d2l.ai) builds its network from a
# convolution block, dense blocks and transition layers, checks their output shapes on
# tiny inputs, lists the shapes through the whole network and trains it. This notebook
# takes the same steps with the MXNet Gluon backend of `densenet_multi` (MXNet 1.9),
# whose parts are built from one shared spec, and adds what the chapter leaves out: every
# stage of the network compared with the NumPy reference, in eval and in train mode. Its
# three siblings (PyTorch, Flax NNX, Keras 3) have the same cells under the same headings;
# only the framework code differs.
#
# **How to open it.** Its kernel is this repository's `mxnet` tox environment (MXNet 1.9
# needs numpy < 1.24, so it has an environment of its own). From the repository root:
#
# ```bash
# .venv/bin/tox -e mxnet --notest
# .tox/mxnet/bin/python -m ipykernel install --user --name densenet-gluon --env PYTHONPATH "$PWD"
# ```
#
# then open `notebooks/gluon_densenet.ipynb` in Jupyter (or `notebooks/gluon_densenet.py`,
# the jupytext percent script it is paired with) and choose the kernel `densenet-gluon`.
# `PYTHONPATH` makes the kernel import this working tree instead of the copy tox installed.
# Everything runs on the CPU, in well under a minute.

# %% [markdown]
# ## Setup
#
# `get_spec("d2l")` is the chapter's network: a 7x7 stem, four dense blocks of four
# BN-ReLU-3x3 layers with growth rate 32, transitions that halve the width, one input
# channel and ten classes. Every width, kernel and padding below comes from this spec.

# %%
# %matplotlib inline
import time
import warnings

warnings.filterwarnings("ignore", category=DeprecationWarning)  # MXNet 1.9 on a new Python
import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

import densenet_multi.gluon as dg
from densenet_multi.data import load_digits_dataset
from densenet_multi.guide import notebook_tools as nbt
from densenet_multi.params import init_params
from densenet_multi.reference import forward
from densenet_multi.spec import get_spec

mx.random.seed(0)
spec = get_spec("d2l")
print("MXNet", mx.__version__)
print(spec.describe())
print(f"{spec.num_params():,} trainable parameters")

# %% [markdown]
# ## From ResNet to DenseNet
#
# A residual block adds its input to what it computes, `x + f(x)`. A dense block keeps
# the input and *concatenates* every new result to it along the channel axis:
# `[x, f1(x), f2([x, f1(x)]), ...]`. Each layer sees all earlier maps, and the width
# grows by a fixed number of channels per layer, the growth rate. Transition layers keep
# that growth in check. The chapter's examples use a growth rate of 10 on a batch of
# four 3-channel 8x8 images; the cells below do the same (shapes printed as NCHW).

# %% [markdown]
# ## The convolution block
#
# The unit everything is made of is the pre-activation order of the ResNet chapter:
# BatchNorm, ReLU, then a convolution. `ConvBlock(spec, in_channels, out_channels,
# geometry)` takes its 3x3, stride 1, padding 1 geometry from the spec (`growth_conv`),
# so 10 output channels keep the 8x8 size. Gluon is channels-first (NCHW, OIHW kernels)
# like PyTorch; a block's parameters exist at once (every layer is given its input
# width) and get values from `initialize()`.

# %%
spec10 = get_spec("d2l", growth_rate=10)
X = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)  # NCHW
conv_block = dg.ConvBlock(spec10, 3, 10, spec10.growth_conv)
conv_block.initialize()
Y = conv_block(mx.nd.array(X))
nbt.show_part("conv block", X.shape, Y.shape, (4, 10, 8, 8))
print(conv_block)

# %% [markdown]
# ## Dense blocks
#
# A dense block of two layers with growth rate 10: the first layer sees the 3 input
# channels, the second 3 + 10 = 13, and the block returns the input and both layers'
# new maps concatenated, 3 + 2 x 10 = 23 channels at the same size.

# %%
dense_block = dg.DenseBlock(spec10, 3, 2)
dense_block.initialize()
Y = dense_block(mx.nd.array(X))
nbt.show_part("dense block", X.shape, Y.shape, (4, 23, 8, 8))
print("each layer's input channels:", spec10.block_plan(3, 2).layer_in_channels)

# %% [markdown]
# ## Transition layers
#
# A transition is a convolution block with a 1x1 convolution that sets the width (here
# from 23 down to 10 channels), followed by a 2x2 average pool with stride 2 that halves
# the height and the width.

# %%
transition = dg.Transition(spec10, 23, 10)
transition.initialize()
Z = transition(Y)
nbt.show_part("transition", Y.shape, Z.shape, (4, 10, 4, 4))

# %% [markdown]
# ## The DenseNet model
#
# The whole network: the stem (7x7 stride-2 convolution, BatchNorm, ReLU, 3x3 stride-2
# max-pool), four dense blocks with a transition after each of the first three, a final
# BatchNorm and ReLU, global average pooling and a linear classifier. `build` fills it
# with the canonical seeded weights, the same arrays in every backend; its parts carry
# the canonical (torchvision) names.

# %%
model = dg.build(spec, seed=0)
print("features:", list(model.features._children))
print("a dense layer:", model.features.denseblock1.denselayer1)
n_params = sum(int(np.prod(p.shape)) for p in model.collect_params().values()
               if p.grad_req != "null")
print(f"{n_params:,} parameters; the spec says {spec.num_params():,}")

# %% [markdown]
# ## Stage shapes at 96x96 and 224x224
#
# The chapter trains on 96x96 images; at the ImageNet size of 224x224 the blocks run at
# 56, 28, 14 and 7 pixels. The shapes come from the model's `forward_stages` on a batch
# of one image and are asserted equal to the spec's `stage_shapes`.

# %%
for size in (96, 224):
    stages = model.forward_stages(mx.nd.zeros((1, 1, size, size)))  # not recording: eval mode
    nbt.shape_table(spec, size, {name: a.shape for name, a in stages.items()})

# %% [markdown]
# ## Every stage against the NumPy reference
#
# Load seeded canonical weights with non-trivial BatchNorm statistics (so that a mix-up
# of mean and variance would show), run a batch, and compare every stage with the
# float64 NumPy reference (`densenet_multi.reference`). The error is
# `max|ours - reference| / max|reference|`, asserted against the project's float32
# tolerance (`densenet_multi.testing.tolerance`). `run` takes and returns NCHW NumPy
# arrays. First eval mode, with the running statistics.

# %%
params = init_params(spec, seed=1, nontrivial_bn=True)
dg.load_canonical(model, params)
x = np.random.default_rng(1).standard_normal((2, 1, 64, 64)).astype(np.float32)
ours = dg.run(model, x)
ref = forward(spec, params, x, dtype="float64")
nbt.check_stages("eval", ours.stages, ref.stages, spec.stage_names)

# %% [markdown]
# ### Train mode and the running statistics
#
# In train mode BatchNorm normalises with the batch's own statistics and updates its
# running statistics. Gluon's momentum 0.9 is the weight of the *old* value (PyTorch's
# 0.1 is the weight of the new); MXNet 1.9 updates the statistics in the backward pass,
# with the biased batch variance, and `run` converts to the canonical (PyTorch) rule.
# The 64x64 input leaves the last block 2x2 maps, so its BatchNorms still average over
# 8 values. `run` leaves the model as it found it.

# %%
ours = dg.run(model, x, train=True)
ref = forward(spec, params, x, train=True, dtype="float64")
nbt.check_stages("train", ours.stages, ref.stages, spec.stage_names)
nbt.check_running(ours.running, ref.running)
after = dg.export_canonical(model)
print("model unchanged by run:", all(np.array_equal(after[k], params[k]) for k in params))

# %% [markdown]
# ## Training on digits
#
# The chapter trains on Fashion-MNIST at 96x96 for ten epochs. To stay short and offline
# this trains on scikit-learn's digits, upsampled to 32x32: 512 training images, the 359
# test images, five epochs. The Gluon way, as in `densenet_multi.gluon.train`: a
# hybridized network, a `DataLoader` over an `ArrayDataset`, the forward pass under
# `autograd.record()` (train mode), `backward()`, and `Trainer.step(batch_size)` with SGD
# (momentum 0.9, weight decay 1e-4) from lr 0.05 on a cosine schedule; train accuracy over
# the epoch's batches, test accuracy in eval mode (`evaluate`). `history` keeps one entry
# per epoch.

# %%
from densenet_multi.gluon.train import evaluate

data = load_digits_dataset(size=32).subset(512)
mx.random.seed(0)
np.random.seed(0)  # noqa: NPY002 (the DataLoader shuffles with NumPy's global generator)
model = dg.build(spec, seed=0, hybridize=True)
train_loader = gluon.data.DataLoader(
    gluon.data.ArrayDataset(data.x_train, data.y_train.astype(np.float32)), batch_size=32,
    shuffle=True)
test_loader = gluon.data.DataLoader(
    gluon.data.ArrayDataset(data.x_test, data.y_test.astype(np.float32)), batch_size=256)
epochs = 5
schedule = mx.lr_scheduler.CosineScheduler(max_update=epochs * len(train_loader), base_lr=0.05,
                                           final_lr=0.0005)
trainer = gluon.Trainer(model.collect_params(), "sgd",
                        {"learning_rate": 0.05, "momentum": 0.9, "wd": 1e-4,
                         "lr_scheduler": schedule})
loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
history = nbt.new_history()
t0 = time.perf_counter()
for epoch in range(1, epochs + 1):
    total, correct, seen = 0.0, 0, 0
    for xb, yb in train_loader:
        with autograd.record():
            logits = model(xb)
            loss = loss_fn(logits, yb)
        loss.backward()
        trainer.step(xb.shape[0])
        total += float(loss.sum().asscalar())
        correct += int((logits.argmax(axis=1) == yb).sum().asscalar())
        seen += xb.shape[0]
    nbt.record_epoch(history, epoch, total / seen, correct / seen, evaluate(model, test_loader))
print(f"trained in {time.perf_counter() - t0:.1f} s")

# %% [markdown]
# ## Loss and accuracy
#
# The training loss per epoch, and the accuracy on the training batches (train mode)
# next to the test accuracy (eval mode, running statistics). The floor is set well below
# what this run reaches, so that it fails a network that does not learn (chance is 10%).

# %%
fig = nbt.plot_history(history, "d2l DenseNet on digits: MXNet Gluon")
nbt.check_floor(history, 0.85)  # measured 0.98-0.99 over seeds 0-2

# %% [markdown]
# ## Summary
#
# The chapter's parts have the shapes it gives (23 channels after the dense block, 10
# at half the size after the transition), the network's stages match the spec at 96x96
# and 224x224, every stage agrees with the NumPy reference within the float32 tolerance
# in both modes, and the network learns the digits. The same walk in the other three
# frameworks is in the sibling notebooks.
