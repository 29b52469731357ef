"""Layout transposes: round trips and meaning."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from densenet_multi import layouts

shapes4 = st.tuples(*[st.integers(1, 5)] * 4)
shapes2 = st.tuples(st.integers(1, 6), st.integers(1, 6))
floats = st.floats(-1e3, 1e3, width=32)


@settings(max_examples=50, deadline=None)
@given(arrays(np.float32, shapes4, elements=floats))
def test_activation_round_trip(x):
    y = layouts.nchw_to_nhwc(x)
    assert y.shape == (x.shape[0], x.shape[2], x.shape[3], x.shape[1])
    assert y.flags.c_contiguous
    assert np.array_equal(layouts.nhwc_to_nchw(y), x)


@settings(max_examples=50, deadline=None)
@given(arrays(np.float32, shapes4, elements=floats))
def test_kernel_round_trip(w):
    h = layouts.oihw_to_hwio(w)
    assert h.shape == (w.shape[2], w.shape[3], w.shape[1], w.shape[0])
    assert np.array_equal(layouts.hwio_to_oihw(h), w)
    assert np.array_equal(layouts.param_from_channels_last("conv_weight",
                          layouts.param_to_channels_last("conv_weight", w)), w)


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, shapes2, elements=floats))
def test_linear_round_trip(w):
    assert np.array_equal(layouts.linear_to_out_in(layouts.linear_to_in_out(w)), w)
    assert np.array_equal(layouts.param_to_channels_last("linear_weight", w), w.T)


def test_meaning_of_each_axis():
    w = np.zeros((4, 3, 2, 1))  # O I H W
    w[1, 2, 1, 0] = 7
    assert layouts.oihw_to_hwio(w)[1, 0, 2, 1] == 7  # H W I O
    x = np.zeros((1, 3, 2, 5))
    x[0, 2, 1, 4] = 5
    assert layouts.nchw_to_nhwc(x)[0, 1, 4, 2] == 5


def test_vectors_pass_through_and_bad_rank_errors():
    v = np.arange(5.0)
    assert np.array_equal(layouts.param_to_channels_last("bn_weight", v), v)
    with pytest.raises(ValueError, match="expected a 4-d array, got shape"):
        layouts.oihw_to_hwio(np.zeros((3, 3)))
