"""What the network needs beyond ``gluon.nn``: a BatchNorm with two-pass train-mode
statistics (a precision fix for MXNet 1.9's CPU kernel, measured below) and
:class:`Recomputed`, the recomputation behind the dense layers' ``memory_efficient``
mode (MXNet 1.9's autograd has no checkpointing).

They live here, not in :mod:`densenet_multi.gluon.densenet`, so that the model
file holds the same five parts as the other backends and these workarounds
stay framework details.
"""

from __future__ import annotations

import ctypes
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from mxnet import autograd, gluon, nd
from mxnet.base import _LIB, MXCallbackList, NDArrayHandle, c_array, c_handle_array, check_call
from mxnet.gluon import nn

__all__ = ["TwoPassBatchNorm", "Recomputed"]


class TwoPassBatchNorm(nn.BatchNorm):
    """``nn.BatchNorm`` whose train-mode batch statistics are computed in two passes
    when the block runs imperatively.

    MXNet 1.9's CPU BatchNorm kernel sums each channel's values (and squared
    deviations) in one float32 loop. Measured on a 4x64x56x56 batch (DenseNet-121's
    first block at 224x224, batch 4), its train-mode output is 2.4e-6 (relative to
    the output's magnitude) from float64, against 1.1e-7 for the same formula
    written with ``F.mean`` reductions (2.0e-5 vs 4.0e-7 for inputs of mean 30);
    through DenseNet-121 at 4x3x224x224 the operator puts the features stage 7.0e-5
    from the float64 reference, beyond the float32 train tolerance (5e-5), where
    this layer gives 1.6e-5 and PyTorch 1.2e-5.

    So, imperatively (the default; what the backend functions and the harness
    run) and in train mode, this layer normalises with ``F.mean`` statistics,
    autograd differentiating the formula, and updates the running statistics
    *in the forward pass*, by MXNet's rule (``momentum`` = weight of the old
    value, biased batch variance). In eval mode, and once the network is
    hybridized (one cached graph serves both modes, so the layer cannot switch
    on the mode there), it is MXNet's ``BatchNorm`` operator, which updates the
    running statistics in the backward pass. Parameters, names and shapes are
    ``nn.BatchNorm``'s (``gamma``, ``beta``, ``running_mean``, ``running_var``).
    """

    def updates_in_forward(self) -> bool:
        """Whether this layer's train-mode forward, run imperatively on an NCHW batch,
        takes the two-pass path and updates its running statistics itself (batch
        statistics, a trainable gamma, channels on axis 1); otherwise MXNet's operator
        runs, which updates them in the backward pass (as it does in a cached graph)."""
        kw = self._kwargs
        return not kw["use_global_stats"] and not kw["fix_gamma"] and kw["axis"] == 1

    def hybrid_forward(self, F, x, gamma, beta, running_mean, running_var):
        if F is not nd or not autograd.is_training() or not self.updates_in_forward() or x.ndim != 4:
            return super().hybrid_forward(F, x, gamma, beta, running_mean, running_var)
        kw = self._kwargs
        mean = F.mean(x, axis=(0, 2, 3), keepdims=True)
        centered = F.broadcast_sub(x, mean)
        var = F.mean(F.square(centered), axis=(0, 2, 3), keepdims=True)  # biased, two-pass
        scale = F.broadcast_mul(F.rsqrt(var + kw["eps"]), gamma.reshape((1, -1, 1, 1)))
        y = F.broadcast_add(F.broadcast_mul(centered, scale), beta.reshape((1, -1, 1, 1)))
        with autograd.pause():
            m = kw["momentum"]
            running_mean[:] = m * running_mean + (1 - m) * mean.reshape((-1,))
            running_var[:] = m * running_var + (1 - m) * var.reshape((-1,))
        return y


# ---------------------------------------------------------------------- recomputation
class Recomputed:
    """``fn(F, call, *inputs)`` computed *without storing its intermediate arrays*: they are
    recomputed in the backward pass (``torch.utils.checkpoint`` for MXNet 1.9, whose
    autograd has none). ``fn`` runs each of ``blocks`` as ``call(block, x)``.

    While autograd records, a call is one recorded node (an ``autograd.Function``) that
    keeps only ``inputs`` (references: the caller keeps them anyway) and copies of the
    blocks' trainable parameters (small next to the activations; the optimizer updates
    the parameters in place, possibly before this node's backward has run). Its forward
    runs ``fn`` unrecorded; its backward runs ``fn`` again on the same values under
    ``autograd.record`` (the same train mode), differentiates it and hands back the
    gradients of ``inputs`` and of every parameter whose ``grad_req`` is not ``'null'``
    (through recorded copies: ``grad_req='add'`` accumulates as usual). The same
    operators on the same values: the same batch statistics, the same numbers.

    ``fn`` runs as a parameter-free HybridBlock (:class:`_Graph`: the arrays are its
    inputs), so :meth:`hybridize` gives it a cached graph (without ``static_alloc``,
    which would keep every intermediate allocated: what this is meant to free). A BN's
    running statistics are updated once: imperatively a :class:`TwoPassBatchNorm`
    updates them in the forward pass (the recomputation writes into copies), in a cached
    graph MXNet's operator updates them in the backward pass, i.e. in the recomputation,
    which runs on MXNet's custom-operator thread after ``backward()`` has returned: call
    ``nd.waitall()`` before reading them (the runtime functions do). Not recording
    (inference), a call is ``fn`` itself. This object is not a Block: ``blocks`` stay
    where they are registered.
    """

    def __init__(self, fn: Callable[..., nd.NDArray], blocks: Sequence[gluon.HybridBlock]) -> None:
        self.blocks = list(blocks)
        self.keys = [(block, name) for block in self.blocks for name in block._reg_params]
        self.graph = _Graph(fn, self._split)

    def _split(self, arrays: Sequence[Any]) -> tuple[Sequence[Any], dict[gluon.HybridBlock, dict[str, Any]]]:
        """``(*inputs, *values)`` -> inputs, {block: {parameter name: value}}."""
        n = len(arrays) - len(self.keys)
        values: dict[gluon.HybridBlock, dict[str, Any]] = {}
        for (block, name), value in zip(self.keys, arrays[n:], strict=True):
            values.setdefault(block, {})[name] = value
        return arrays[:n], values

    def hybridize(self, active: bool = True) -> None:
        self.graph.hybridize(active)

    def __call__(self, *inputs: nd.NDArray) -> nd.NDArray:
        params = [block._reg_params[name] for block, name in self.keys]
        live = [p.data() for p in params]
        if not autograd.is_recording():
            return self.graph(*inputs, *live)
        trainable = [i for i, p in enumerate(params) if p.grad_req != "null"]
        copies = [live[i].copy() for i in trainable]  # recorded: the route of their gradients
        with autograd.pause():
            saved = [v.copy() for v in live]
        forward, again = list(live), list(saved)  # the values of the two passes
        for i, c in zip(trainable, copies, strict=True):
            again[i] = c
        if self.graph._active:
            # MXNet's BN operator updates the running statistics in its backward pass: the
            # recomputation gets the live ones, and the forward pass copies, so that no
            # operator queued by this thread before the recomputation (the next step's
            # forward) waits on them: it would wait for this step's gradients, which wait
            # for the recomputation.
            for i, (_, name) in enumerate(self.keys):
                if name in ("running_mean", "running_var"):
                    forward[i], again[i] = saved[i], live[i]
        node = _Recomputation(self.graph, forward, again, trainable, autograd.is_training())
        return node(*inputs, *copies)


class _Graph(gluon.HybridBlock):
    """``fn`` over explicit arrays ``(*inputs, *values)`` (``split`` tells them apart). Each block
    runs as ``block.hybrid_forward(F, x, **its values)``: its own code, these arrays instead
    of its parameters. It has no parameters of its own and registers no child."""

    def __init__(self, fn: Callable[..., nd.NDArray], split: Callable[..., Any]) -> None:
        super().__init__(prefix="recomputed_")
        self._fn, self._split = fn, split

    def hybrid_forward(self, F, *arrays):
        inputs, values = self._split(arrays)

        def call(block, x):
            return block.hybrid_forward(F, x, **values[block])

        return self._fn(F, call, *inputs)


class _Recomputation(autograd.Function):
    """The recorded node of a :class:`Recomputed` call. Inputs: ``fn``'s, then the recorded
    copies of the trainable parameters (``values[i]`` for ``i`` in ``trainable``)."""

    def __init__(self, graph: _Graph, forward: list[nd.NDArray], values: list[nd.NDArray],
                 trainable: list[int], train_mode: bool) -> None:
        super().__init__()
        # the graph's values in the forward pass and in the recomputation
        self.graph, self.forward_values, self.values = graph, forward, values
        self.trainable, self.train_mode = trainable, train_mode

    def __call__(self, *inputs: nd.NDArray) -> nd.NDArray:
        # MXNet 1.9's Function.__call__, recording this node, with one fix: its backward
        # entry writes the gradients in order and *stops at the first input whose
        # gradient is not wanted* (req 'null'), and ignores req 'add'. Here an input
        # may well be unwanted before a wanted one (the block input of a fine-tuned
        # network with frozen earlier layers, or every parameter when only the input's
        # gradient is asked for), so each gradient is written by its own req.
        assert not self._used, "each Function instance can only be called once"
        self._used = True
        with autograd.pause(train_mode=autograd.is_training()):
            output = self.forward(*inputs)
        key = autograd.Function._registry.inc()

        def backward_entry(num_ograds, num_igrads, ptrs, reqs, is_train, _):
            try:
                ograds = [nd.NDArray(ctypes.cast(p, NDArrayHandle), writable=False)
                          for p in ptrs[:num_ograds]]
                igrads = [nd.NDArray(ctypes.cast(p, NDArrayHandle), writable=True)
                          for p in ptrs[num_ograds:num_ograds + num_igrads]]
                self.backward_into(*ograds, grads=igrads, reqs=list(reqs[:num_igrads]))
            except Exception:  # returning False makes MXNet fail a CHECK, after this message
                print(f"Error in {type(self).__name__}.backward: {traceback.format_exc()}")
                return False
            return True

        def delete_entry(_):
            autograd.Function._registry.ref_holder.pop(key, None)
            return True

        callbacks = [autograd.Function._bwd_functype(backward_entry),
                     autograd.Function._del_functype(delete_entry)]
        callbacks = [ctypes.cast(f, ctypes.CFUNCTYPE(ctypes.c_int)) for f in callbacks]
        context = MXCallbackList(
            ctypes.c_int(len(callbacks)),
            ctypes.cast(c_array(ctypes.CFUNCTYPE(ctypes.c_int), callbacks),
                        ctypes.POINTER(ctypes.CFUNCTYPE(ctypes.c_int))),
            ctypes.cast(c_array(ctypes.c_void_p, [None] * len(callbacks)),
                        ctypes.POINTER(ctypes.c_void_p)))
        autograd.Function._registry.ref_holder[key] = context
        check_call(_LIB.MXCustomFunctionRecord(
            ctypes.c_int(len(inputs)), c_handle_array(inputs), ctypes.c_int(1),
            c_handle_array([output]), ctypes.byref(context)))
        return output

    def forward(self, *args: nd.NDArray) -> nd.NDArray:
        inputs = args[:len(args) - len(self.trainable)]
        self.save_for_backward(*inputs)
        out = self.graph(*inputs, *self.forward_values)
        self.forward_values = None  # not needed again
        return out

    def backward_into(self, dy: nd.NDArray, *, grads: list[nd.NDArray], reqs: list[int]) -> None:
        """Recompute, differentiate, and write the inputs' gradients into ``grads`` (MXNet's
        buffers for this node's inputs) by ``reqs`` (MXNet's OpReqType: 0 null, 1 write,
        2 in place, 3 add)."""
        # detached: the same memory, as new variables of this pass, outside the recorded graph
        inputs = [x.detach() for x in self.saved_tensors]
        values = list(self.values)
        for i in self.trainable:
            values[i] = values[i].detach()
        variables = inputs + [values[i] for i in self.trainable]
        # Gradient buffers from nd.empty, written ('write'): attach_grad would zero each
        # first (measured, DenseNet-121 224 batch 16: 0.24 s of a 4 s step). Every
        # gradient is computed, wanted or not (req null): the backward pass must run all
        # the same (in a cached graph it updates the BN running statistics). MXNet's
        # buffers are not written directly: they wrap raw memory, where a oneDNN operator
        # leaves its blocked layout (float32: wrong input gradients, every run); a copy
        # writes the plain layout.
        buffers = [nd.empty(v.shape, v.context, v.dtype) for v in variables]
        autograd.mark_variables(variables, buffers, "write")
        with autograd.record(train_mode=self.train_mode):
            y = self.graph(*inputs, *values)
        y.backward(dy, train_mode=self.train_mode)
        # copyto, not igrad[:] = ...: NDArray's indexing costs 0.4 ms of Python a call (0.3 s
        # a step for DenseNet-121's 825 gradients). The copy writes the plain layout; an
        # 'add' adds such a copy (the sum's inputs both plain), not the buffer itself.
        for igrad, grad, req in zip(grads, buffers, reqs, strict=True):
            if req in (1, 2):  # write, in place
                grad.copyto(igrad)
            elif req == 3:  # add
                nd.elemwise_add(igrad, grad.copyto(grad.context), out=igrad)
        # Wait for them before returning: MXNet 1.9 runs this method on its custom-operator
        # thread and treats the node as finished once it has returned; without this wait
        # the gradients read from that pass were wrong (up to 1e18, different from run to
        # run) in about half of the runs of a two-convolution test.
        for g in buffers:
            g.wait_to_read()
        for g, req in zip(grads, reqs, strict=True):
            if req:
                g.wait_to_read()
