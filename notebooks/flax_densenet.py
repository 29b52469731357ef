# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: DenseNet (Flax NNX, tox env jax)
#     language: python
#     name: densenet-flax
# ---

# %% [markdown]
# # DenseNet in Flax NNX: the d2l.ai chapter, cell by cell
#
# The DenseNet chapter of *Dive into Deep Learning* (d2l.ai) builds its network from a
# convolution block, dense blocks and transition layers, checks their output shapes on
# tiny inputs, lists the shapes through the whole network and trains it. This notebook
# takes the same steps with the Flax NNX backend of `densenet_multi` (JAX + optax), whose
# parts are built from one shared spec, and adds what the chapter leaves out: every stage
# of the network compared with the NumPy reference, in eval and in train mode. Its three
# siblings (PyTorch, Keras 3, MXNet Gluon) have the same cells under the same headings;
# only the framework code differs.
#
# **How to open it.** Its kernel is this repository's `jax` tox environment. From the
# repository root:
#
# ```bash
# .venv/bin/tox -e jax --notest
# .tox/jax/bin/python -m ipykernel install --user --name densenet-flax \
#     --env PYTHONPATH "$PWD" --env JAX_PLATFORMS cpu
# ```
#
# then open `notebooks/flax_densenet.ipynb` in Jupyter (or `notebooks/flax_densenet.py`,
# the jupytext percent script it is paired with) and choose the kernel `densenet-flax`.
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

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from densenet_multi import flax as fx
from densenet_multi import layouts
from densenet_multi.data import load_digits_dataset
from densenet_multi.guide import notebook_tools as nbt
from densenet_multi.params import init_params
from densenet_multi.reference import forward
from densenet_multi.spec import get_spec

spec = get_spec("d2l")
print("JAX", jax.__version__, "Flax", flax.__version__, "on", jax.default_backend())
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
# so 10 output channels keep the 8x8 size. Flax is channels-last (NHWC, HWIO kernels),
# and an NNX module creates its parameters at once, from the `rngs` it is given.

# %%
spec10 = get_spec("d2l", growth_rate=10)
X = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)  # NCHW
X_nhwc = jnp.asarray(layouts.nchw_to_nhwc(X))
conv_block = fx.ConvBlock(spec10, 3, 10, spec10.growth_conv, rngs=nnx.Rngs(0))
Y = conv_block(X_nhwc)
nbt.show_part("conv block", X.shape, nbt.nchw(Y.shape, "NHWC"), (4, 10, 8, 8))
print("kernel (H, W, in, out):", conv_block.conv.kernel.shape,
      "padding:", conv_block.conv.padding)

# %% [markdown]
# ## Dense blocks
#
# A dense block of two layers with growth rate 10: the first layer sees the 3 input
# channels, the second 3 + 10 = 13, and the block returns the input and both layers'
# new maps concatenated, 3 + 2 x 10 = 23 channels at the same size.

# %%
dense_block = fx.DenseBlock(spec10, 3, 2, rngs=nnx.Rngs(0))
Y = dense_block(X_nhwc)
nbt.show_part("dense block", X.shape, nbt.nchw(Y.shape, "NHWC"), (4, 23, 8, 8))
print("each layer's input channels:", spec10.block_plan(3, 2).layer_in_channels)

# %% [markdown]
# ## Transition layers
#
# A transition is a convolution block with a 1x1 convolution that sets the width (here
# from 23 down to 10 channels), followed by a 2x2 average pool with stride 2 that halves
# the height and the width.

# %%
transition = fx.Transition(spec10, 23, 10, rngs=nnx.Rngs(0))
Z = transition(Y)
nbt.show_part("transition", nbt.nchw(Y.shape, "NHWC"), nbt.nchw(Z.shape, "NHWC"), (4, 10, 4, 4))

# %% [markdown]
# ## The DenseNet model
#
# The whole network: the stem (7x7 stride-2 convolution, BatchNorm, ReLU, 3x3 stride-2
# max-pool), four dense blocks with a transition after each of the first three, a final
# BatchNorm and ReLU, global average pooling and a linear classifier. `build` fills it
# with the canonical seeded weights, the same arrays in every backend; its parts carry
# the canonical (torchvision) names, so the paths of `nnx.state` are those names.

# %%
model = fx.build(spec, seed=0)
paths = [".".join(map(str, path)) for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))]
print("parameters:", paths[:3], "...")
layer = model.features["denseblock1"].denselayer1
print("a dense layer:", type(layer.norm).__name__, f"(momentum {layer.norm.momentum},",
      f"epsilon {layer.norm.epsilon}) ->", type(layer.conv).__name__, layer.conv.kernel.shape)
n_params = sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
print(f"{n_params:,} parameters; the spec says {spec.num_params():,}")

# %% [markdown]
# ## Stage shapes at 96x96 and 224x224
#
# The chapter trains on 96x96 images; at the ImageNet size of 224x224 the blocks run at
# 56, 28, 14 and 7 pixels. The shapes come from the model's `forward_stages`, traced by
# `nnx.eval_shape` on a batch of one image (shapes only, nothing computed), and are
# asserted equal to the spec's `stage_shapes`.

# %%
model.eval()
for size in (96, 224):
    stages = nnx.eval_shape(lambda m, x: m.forward_stages(x), model,
                            jax.ShapeDtypeStruct((1, size, size, 1), jnp.float32))
    nbt.shape_table(spec, size, {name: nbt.nchw(a.shape, "NHWC") for name, a in stages.items()})

# %% [markdown]
# ## Every stage against the NumPy reference
#
# Load seeded canonical weights with non-trivial BatchNorm statistics (so that a mix-up
# of mean and variance would show), run a batch, and compare every stage with the
# float64 NumPy reference (`densenet_multi.reference`). The error is
# `max|ours - reference| / max|reference|`, asserted against the project's float32
# tolerance (`densenet_multi.testing.tolerance`). `run` takes and returns NCHW NumPy
# arrays (it transposes to and from NHWC). First eval mode, with the running statistics.

# %%
params = init_params(spec, seed=1, nontrivial_bn=True)
fx.load_canonical(model, params)
x = np.random.default_rng(1).standard_normal((2, 1, 64, 64)).astype(np.float32)
ours = fx.run(model, x)
ref = forward(spec, params, x, dtype="float64")
nbt.check_stages("eval", ours.stages, ref.stages, spec.stage_names)

# %% [markdown]
# ### Train mode and the running statistics
#
# In train mode BatchNorm normalises with the batch's own statistics and updates its
# running statistics. Flax's momentum 0.9 is the weight of the *old* value (PyTorch's
# 0.1 is the weight of the new), and it updates the variance with the biased batch
# variance; `run` converts to the canonical (PyTorch) rule. The 64x64 input leaves the
# last block 2x2 maps, so its BatchNorms still average over 8 values. `run` leaves the
# model as it found it.

# %%
ours = fx.run(model, x, train=True)
ref = forward(spec, params, x, train=True, dtype="float64")
nbt.check_stages("train", ours.stages, ref.stages, spec.stage_names)
nbt.check_running(ours.running, ref.running)
after = fx.export_canonical(model)
print("model unchanged by run:", all(np.array_equal(after[k], params[k]) for k in params))

# %% [markdown]
# ## Training on digits
#
# The chapter trains on Fashion-MNIST at 96x96 for ten epochs. To stay short and offline
# this trains on scikit-learn's digits, upsampled to 32x32: 512 training images, the 359
# test images, five epochs. The JAX way (`densenet_multi.flax.train.fit`): a train step
# compiled once with `nnx.jit` (batches keep one shape, so the last incomplete one is
# dropped), optax SGD with momentum 0.9 at a constant lr of 0.05 held by `nnx.Optimizer`;
# train accuracy over the epoch's batches in train mode, test accuracy in eval mode.
# `history` keeps one entry per epoch.

# %%
from densenet_multi.flax.train import fit

data = load_digits_dataset(size=32).subset(512)
model = fx.build(spec, seed=0)
history = nbt.new_history()
t0 = time.perf_counter()
for r in fit(model, data, epochs=5, batch_size=32, lr=0.05, seed=0, show_progress=False, log=None):
    nbt.record_epoch(history, r.epoch, r.loss, r.train_acc, r.test_acc)
print(f"trained in {time.perf_counter() - t0:.1f} s (the first step compiles)")

# %% [markdown]
# ## Loss and accuracy
#
# The training loss per epoch, and the accuracy on the training batches (train mode)
# next to the test accuracy (eval mode, running statistics). The floor is set well below
# what this run reaches, so that it fails a network that does not learn (chance is 10%).

# %%
fig = nbt.plot_history(history, "d2l DenseNet on digits: Flax NNX")
nbt.check_floor(history, 0.80)  # measured 0.93-0.97 over seeds 0-2

# %% [markdown]
# ## Summary
#
# The chapter's parts have the shapes it gives (23 channels after the dense block, 10
# at half the size after the transition), the network's stages match the spec at 96x96
# and 224x224, every stage agrees with the NumPy reference within the float32 tolerance
# in both modes, and the network learns the digits. The same walk in the other three
# frameworks is in the sibling notebooks.
