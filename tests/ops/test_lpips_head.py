"""lpips_head: the Triton kernel (interpreter on CPU) vs the eager reference (fp64 truth, 2x-eager rule),
NCHW / channels_last / generic strides, shared targets, and the argument errors."""

import pytest
import torch

from rlvr_world import ops
from rlvr_world.ops import _dispatch, reference
from rlvr_world.testing import assert_close, assert_within_eager_error

needs_triton = pytest.mark.skipif(_dispatch.missing("triton", torch.device("cpu")) is not None,
                                  reason="Triton cannot run on CPU tensors here (needs triton + TRITON_INTERPRET=1)")


def _features(b, c, h, w, *, seed=0, scale=3.0):
    """ReLU-like features (half the entries 0, some pixels all-zero), fp64."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(b, c, h, w, generator=g, dtype=torch.float64) * scale).relu()
    x[:, :, 0, 0] = 0  # an all-zero feature vector: its normalised form is 0 (eps), not NaN
    return x


def _weight(c, seed=1):
    return torch.rand(c, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 0.5


def _layout(x, layout):
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # H and W swapped back through a permuted copy: no dense layout at all
        return x.transpose(2, 3).contiguous().transpose(2, 3)
    return x.contiguous()


DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
CASES = (
    # (C, H, W), B, G, layout, dtype. Tiny odd maps: every dtype x layout x group size. A map with two
    # channel tiles and two pixel blocks (C 100, 32 x 48 under the interpreter's tiles): dtypes x dense layouts.
    [((3, 7, 9), 4, g, layout, dt) for g in (1, 4) for layout in ("nchw", "channels_last", "strided") for dt in DTYPES]
    + [((100, 32, 48), 4, 4, layout, dt) for layout in ("nchw", "channels_last") for dt in DTYPES]
    + [((100, 32, 48), 4, 2, layout, torch.float32) for layout in ("nchw", "channels_last")]
)


@needs_triton
@pytest.mark.parametrize("shape,b,group_size,layout,dtype", CASES)
def test_triton_matches_reference(shape, b, group_size, layout, dtype):
    c, h, w = shape
    x64, y64, w64 = _features(b, c, h, w), _features(b // group_size, c, h, w, seed=2), _weight(c)
    x, y = _layout(x64.to(dtype), layout), _layout(y64.to(dtype), layout)
    weight = w64.float()
    truth = reference.lpips_head(x.double(), y.double(), weight.double(), group_size)  # on the rounded values
    eager = reference.lpips_head(x, y, weight, group_size)
    got = ops.lpips_head(x, y, weight, group_size, impl="triton")
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert got.shape == (b,)
    # bf16/fp16 features: both paths compute in fp32 on the same values, so the 2x rule holds at fp32 scale
    assert_within_eager_error(f"lpips_head {dtype} {layout} G={group_size}", got, eager, truth)


@needs_triton
def test_batch_slice_of_channels_last():
    """The model hands the kernel batch slices of one channels_last feature map (pred rows, then targets)."""
    feats = _features(6, 64, 8, 12).float().contiguous(memory_format=torch.channels_last)
    x, y, w = feats[:4], feats[4:], _weight(64).float()
    truth = reference.lpips_head(x.double(), y.double(), w.double(), 2)
    assert_within_eager_error("slices", ops.lpips_head(x, y, w, 2, impl="triton"), reference.lpips_head(x, y, w, 2), truth)


@needs_triton
def test_identical_features_cancel():
    """pred == target: the expanded form cancels to ~0; its absolute error stays at fp32 rounding x max w."""
    x, w = _features(4, 256, 6, 6).float(), _weight(256).float()
    got = ops.lpips_head(x, x.clone(), w, impl="triton")
    assert_close("d(x, x)", got, torch.zeros(4), atol=4 * 256 * 6e-8 * float(w.max()))


def test_auto_on_cpu_is_the_reference():
    x, y, w = _features(4, 16, 5, 5).float(), _features(2, 16, 5, 5, seed=3).float(), _weight(16).float()
    assert torch.equal(ops.lpips_head(x, y, w, 2), reference.lpips_head(x, y, w, 2))
    assert torch.equal(ops.lpips_head(x, y, w, 2, impl="reference"), reference.lpips_head(x, y, w, 2))


def test_empty_batch():
    x, w = torch.zeros(0, 8, 3, 3), torch.ones(8)
    assert ops.lpips_head(x, x, w).shape == (0,)


X, W8 = torch.rand(4, 8, 3, 3), torch.rand(8)


@pytest.mark.parametrize("args,kwargs,match", [
    ((X[0], X, W8), {}, r"feat_pred must be 4-D, got shape \(8, 3, 3\)"),
    ((X.long(), X, W8), {}, "feat_pred must be a float tensor"),
    ((X, X.double(), W8), {}, "feat_target must have feat_pred's dtype torch.float32, got torch.float64"),
    ((X, X[:, :4], W8), {}, r"feat_target must have feat_pred's \(C, H, W\) = \(8, 3, 3\), got \(4, 3, 3\)"),
    ((X, X, W8), {"group_size": 2}, "feat_target must have B / group_size = 4 / 2 maps .* got 4"),
    ((X, X[:2], W8), {"group_size": 3}, "feat_target must have B / group_size = 4 / 3 maps"),
    ((X, X, W8), {"group_size": 0}, "group_size must be a positive int, got 0"),
    ((X, X, W8), {"group_size": 2.0}, "group_size must be a positive int, got 2.0"),
    ((X, X, torch.rand(7)), {}, r"weight must have shape \(8,\) .* got \(7,\)"),
    ((X, X, W8[None]), {}, "weight must be 1-D"),
    ((X, X, W8.to("meta")), {}, "weight must be on feat_pred's device cpu, got meta"),
    ((X[:, :, :0], X[:, :, :0], W8), {}, r"non-empty spatial size, got \(H, W\) = \(0, 3\)"),
    ((X, [1.0], W8), {}, "feat_target must be a torch.Tensor, got list"),
])
def test_argument_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ops.lpips_head(*args, **kwargs)


def test_impl_errors():
    with pytest.raises(RuntimeError, match="this op has no cpp backend"):
        ops.lpips_head(X, X, W8, impl="cpp")
    with pytest.raises(ValueError, match="impl must be one of"):
        ops.lpips_head(X, X, W8, impl="fast")


def test_doctest():
    import doctest
    import importlib

    # the module, not the function that rlvr_world.ops re-exports under the same name
    module = importlib.import_module("rlvr_world.ops.lpips_head")
    assert doctest.testmod(module, extraglobs={"torch": torch}).failed == 0
