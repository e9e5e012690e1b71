"""The dispatch table of minivae.gpu: which ops run CUDA kernels on CuPy arrays, and when.

Without a GPU the table is checked with NumPy arrays standing for CuPy's (``is_gpu_array``
patched): the choice of path and its explanation, and that consulting it imports no CuPy. The
dense-layer rows run their products on the stand-in libcublas of conftest.py (``fake_cublas``),
which computes the column-major gemm it is given from the arrays' addresses, and their bias and
ReLU kernels on the host builds of tests/test_kernels.py (``fake_gpu``): their results are
compared with the NumPy ops, and the gemm arguments of each product are checked one by one.
"""
import re
import subprocess
import sys

import numpy as np
import pytest

import minivae as mv
import minivae.functional as F
from minivae import gradcheck_cases, optim
from minivae.function import Context
from minivae.gpu import cublas, dispatch
from minivae.ops.vae import BernoulliLogProb, GaussianLogProb
from minivae.random import Noise
from test_kernels import dispatch_table, fake_gpu, shim  # noqa: F401  (fixtures)


@pytest.fixture
def as_gpu(monkeypatch):
    """Make the table take every array for a CuPy array."""
    monkeypatch.setattr(dispatch, "is_gpu_array", lambda array: True)


def test_numpy_inputs_run_the_xp_code():
    mu = np.zeros((4, 3))
    assert dispatch.select("KLNormalStd", mu, mu) is None
    assert dispatch.explain("KLNormalStd", mu, mu) == "xp code: no input is a CuPy array"


def test_a_kernel_runs_only_where_its_condition_holds(as_gpu):
    mu, row = np.zeros((4, 3)), np.zeros(3)
    row_kl = dispatch.select("KLNormalStd", mu, mu)
    assert row_kl is dispatch.TABLE["KLNormalStd"] and row_kl.__name__ == "KLNormalStd"
    assert dispatch.explain("KLNormalStd", mu, mu).startswith("kernel: ")
    assert dispatch.select("KLNormalStd", mu, row) is None  # broadcast shapes: the xp code, openly
    assert dispatch.explain("KLNormalStd", mu, row) == (
        "xp code on CuPy: KLNormalStd's kernel takes mu and logvar of one shape, at least 1-D, and one "
        "dtype, float32 or float64")
    assert dispatch.select("Exp", mu) is None
    assert "has no kernel" in dispatch.explain("Exp", mu)


def test_the_module_docstring_shows_what_explain_says(as_gpu):
    """The example of ``explain`` in the module docstring prints today's reason, word for word."""
    example = re.search(r"^ *>>> print\((dispatch\.explain\(.*?\))\) +#.*\n *(.*)$", dispatch.__doc__, flags=re.M)
    assert example, "the module docstring shows no >>> print(dispatch.explain(...)) and its output"
    call, shown = example.groups()
    mu, logvar_row = np.zeros((4, 3)), np.zeros(3)  # (B, D) and (D,), as its comment says
    assert eval(call, {"dispatch": dispatch, "mu": mu, "logvar_row": logvar_row}) == shown


@pytest.mark.parametrize("dtype", [np.float16, np.int32])
def test_the_vae_and_adam_rows_leave_other_dtypes_to_the_xp_code(fake_gpu, as_gpu, dtype):
    """Their kernels take float32 and float64 only (one dtype for mu and logvar): other inputs
    run the xp code, and with the same results as on the CPU."""
    a, f32 = np.ones((2, 3), dtype), np.ones((2, 3), np.float32)
    for op, arrays in {"ReparameterizeNoise": (a, a), "KLNormalStd": (a, a), "ReparameterizeKL": (a, a),
                       "Adam": (a.reshape(-1),) * 3}.items():
        assert dispatch.select(op, *arrays) is None, op
        assert dispatch.select(op, *(f32.reshape(arrays[0].shape),) * len(arrays)) is dispatch.TABLE[op], op
    for op in ("ReparameterizeNoise", "KLNormalStd", "ReparameterizeKL"):
        assert dispatch.select(op, f32, f32.astype(np.float64)) is None, op
    if dtype == np.float16:  # (the ops' own dtypes; the Philox normals are float32 or float64 only)
        mu, logvar = mv.tensor(np.full((2, 3), 0.5, dtype)), mv.tensor(np.zeros((2, 3), dtype))
        np.testing.assert_array_equal(F.kl_normal_std(mu, logvar).data, [0.375, 0.375])
        p = mv.Tensor(np.ones(4, dtype), requires_grad=True)
        p.grad = np.ones(4, dtype)
        optim.Adam([p], lr=0.5).step()
        np.testing.assert_array_equal(p.data, np.full(4, 0.5, dtype))
    assert not fake_gpu[1]  # no launch


def test_a_0d_reparameterization_stays_0d_on_the_kernel_path(fake_gpu, monkeypatch):
    mu, logvar = mv.tensor(np.array(0.5, np.float32)), mv.tensor(np.array(0.1, np.float32))
    want = F.reparameterize(mu, logvar, Noise(5, 7))
    monkeypatch.setattr(dispatch, "is_gpu_array", lambda array: True)
    got = F.reparameterize(mu, logvar, Noise(5, 7))
    assert [c[0] for c in fake_gpu[1]] == ["mv_reparam_fwd_f32"]
    assert got.shape == want.shape == ()
    np.testing.assert_allclose(got.data, want.data, rtol=1e-6)


def test_reparameterize_kl_refuses_no_samples_on_both_paths(fake_gpu, monkeypatch):
    mu = mv.tensor(np.zeros((4, 3), np.float32))
    for gpu in (False, True):
        with dispatch_table(monkeypatch, gpu):
            if gpu:
                assert dispatch.select("ReparameterizeKL", mu.data, mu.data, samples=0) is None
            with pytest.raises(ValueError, match="samples must be at least 1, got 0"):
                F.reparameterize_kl(mu, mu, Noise(1), samples=0)
    assert not fake_gpu[1]  # no launch


def test_the_table_names_the_registered_kernels():
    """Reparameterization (noise), KL, the fused pair, the Bernoulli and Gaussian log-densities,
    the dense layers, the log-sum-exp, the log-softmax and Adam, each with a stated condition
    and, for the ops, a forward and a backward launch."""
    assert {"ReparameterizeNoise", "KLNormalStd", "ReparameterizeKL", "BernoulliLogProb", "GaussianLogProb",
            "Matmul", "Linear", "LinearRelu", "Relu", "LogSumExp", "LogSoftmax", "Adam"} <= set(dispatch.TABLE)
    for name, row in dispatch.TABLE.items():
        assert row.op == name and row.takes and callable(row.forward) and callable(row.accepts)
        assert name == "Adam" or callable(row.backward)


def test_consulting_the_table_imports_no_cupy():
    code = ("import sys, minivae, minivae.optim, minivae.gpu.dispatch; "
            "assert 'cupy' not in sys.modules and 'minivae.gpu.kernels' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


# ------------------------------------------------------------------------------ dense layers on cuBLAS
TOL = {np.float32: dict(rtol=2e-6, atol=2e-6), np.float64: dict(rtol=1e-13, atol=1e-13)}
OP_N, OP_T = 0, 1  # cublasOperation_t
DENSE = {  # op name -> (function of tensors, input shapes): every dimension different
    "Matmul": (F.matmul, [(5, 7), (7, 3)]),
    "Linear": (F.linear, [(2, 4, 7), (7, 3), (3,)]),
    "LinearRelu": (F.linear_relu, [(2, 4, 7), (7, 3), (3,)]),
}
CASES = [("Matmul", 2), ("Linear", 3), ("Linear", 2), ("LinearRelu", 3), ("LinearRelu", 2)]


def _forward_backward(fn, arrays, upstream, monkeypatch, gpu):
    """fn's output, the input gradients for the upstream gradient, and what the node ran; the
    table takes the arrays for CuPy's when ``gpu``."""
    tensors = [mv.Tensor(a.copy(), requires_grad=True) for a in arrays]
    with dispatch_table(monkeypatch, gpu):
        out = fn(*tensors)
        ran = out._node.fn
        if upstream is None:  # through sum: the row gets a broadcast (non-contiguous) gradient
            out.sum().backward()
        else:
            out.backward(upstream)
    return [out.data] + [t.grad for t in tensors], ran


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, n_inputs", CASES)
@pytest.mark.parametrize("through_sum", [False, True])
def test_dense_rows_equal_the_numpy_ops(fake_gpu, fake_cublas, monkeypatch, name, n_inputs, dtype, through_sum):
    """Forward and backward of each dense-layer row (its products on the stand-in cuBLAS, its
    bias and ReLU on the kernels' host builds) against the op's NumPy code: output and every
    gradient to float rounding; one launch for the bias and the ReLU, one for the gradients of
    the ReLU and the bias together, none for a product alone."""
    fn, shapes = DENSE[name]
    rng = np.random.default_rng(5)
    arrays = [rng.standard_normal(s).astype(dtype) for s in shapes[:n_inputs]]
    out_shape = shapes[0][:-1] + shapes[1][-1:]
    upstream = None if through_sum else rng.standard_normal(out_shape).astype(dtype)
    got, ran = _forward_backward(fn, arrays, upstream, monkeypatch, gpu=True)
    want, ran_cpu = _forward_backward(fn, arrays, upstream, monkeypatch, gpu=False)
    assert ran is dispatch.TABLE[name] and ran_cpu.__name__ == name and ran_cpu is not ran
    assert len(fake_cublas.calls) == 3  # forward, g W^T, x^T g
    sfx = "f32" if dtype == np.float32 else "f64"
    launches = {"Matmul": [], "Linear": [f"mv_bias_act_{sfx}", f"mv_bias_grad_{sfx}"] * (n_inputs == 3),
                "LinearRelu": [f"mv_bias_act_{sfx}", f"mv_{'bias' if n_inputs == 3 else 'relu'}_grad_{sfx}"]}[name]
    assert [c[0] for c in fake_gpu[1]] == launches
    if name == "LinearRelu":
        assert 0 < (want[0] > 0).mean() < 1  # the mask matters
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype == dtype
        np.testing.assert_allclose(g, w, **TOL[dtype])


@pytest.mark.parametrize("name", ["Linear", "LinearRelu"])
@pytest.mark.parametrize("w_shape", [(0, 3), (5, 0)])
def test_dense_rows_and_ops_take_layers_of_no_inputs_or_no_outputs(fake_gpu, fake_cublas, monkeypatch, name,
                                                                  w_shape):
    """W of shape (0, out) or (in, 0): the kernel row and the xp code give the same (zero or
    empty) output and gradients."""
    rng = np.random.default_rng(2)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in ((2, 4, w_shape[0]), w_shape, w_shape[1:])]
    upstream = rng.standard_normal((2, 4, w_shape[1])).astype(np.float32)
    got, ran = _forward_backward(DENSE[name][0], arrays, upstream, monkeypatch, gpu=True)
    want, _ = _forward_backward(DENSE[name][0], arrays, upstream, monkeypatch, gpu=False)
    assert ran is dispatch.TABLE[name]
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, **TOL[np.float32])


def _gemm(name, transa, transb, m, n, k, A, lda, B, ldb, C, ldc):
    """The fields of conftest's GemmCall for C = 1 * op(A) op(B) + 0 * C (column-major)."""
    return (name, transa, transb, m, n, k, 1.0, A.ctypes.data, lda, B.ctypes.data, ldb, 0.0, C.ctypes.data, ldc)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dense_row_gemm_arguments(fake_gpu, fake_cublas, dtype):
    """The three products of a Linear row as cuBLAS receives them. Row-major C = op(A) @ op(B) is
    column-major C^T = op(B)^T @ op(A)^T, so B comes first; transposes are flags on the arrays'
    own memory (W, x and g are read where they are: no copies)."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 4, 7)).astype(dtype)  # 8 rows of in = 7
    W = rng.standard_normal((7, 3)).astype(dtype)  # out = 3
    b = rng.standard_normal(3).astype(dtype)
    g = rng.standard_normal((2, 4, 3)).astype(dtype)
    row = dispatch.TABLE["Linear"]
    ctx = Context()
    ctx.needs_input_grad = (True, True, True)
    out = row.forward(ctx, x, W, b)
    gx, gW, gb = row.backward(ctx, g)
    name = "cublasSgemm_v2" if dtype == np.float32 else "cublasDgemm_v2"
    assert fake_cublas.calls == [
        _gemm(name, OP_N, OP_N, 3, 8, 7, W, 3, x, 7, out, 3),  # out = x W
        _gemm(name, OP_T, OP_N, 7, 8, 3, W, 3, g, 3, gx, 7),  # gx = g W^T
        _gemm(name, OP_N, OP_T, 3, 7, 8, g, 3, x, 7, gW, 3),  # gW = x^T g
    ]
    tol = TOL[dtype]
    np.testing.assert_allclose(out, x @ W + b, **tol)
    np.testing.assert_allclose(gx, g @ W.T, **tol)
    np.testing.assert_allclose(gW, x.reshape(8, 7).T @ g.reshape(8, 3), **tol)
    np.testing.assert_allclose(gb, g.reshape(8, 3).sum(0), **tol)
    assert ctx.saved[0] is x and ctx.saved[1] is W  # what the op's own forward saves


def test_dense_rows_run_only_the_products_needed(fake_gpu, fake_cublas):
    """No gradient for x (a data batch): the backward runs x^T g only."""
    x, W, b = np.ones((4, 5)), np.ones((5, 2)), np.ones(2)
    row = dispatch.TABLE["LinearRelu"]
    ctx = Context()
    ctx.needs_input_grad = (False, True, False)
    row.forward(ctx, x, W, b)
    gx, gW, gb = row.backward(ctx, np.ones((4, 2)))
    assert gx is None and gb is None
    np.testing.assert_array_equal(gW, np.full((5, 2), 4.0))
    assert [(c.transa, c.transb) for c in fake_cublas.calls] == [(OP_N, OP_N), (OP_N, OP_T)]


def test_dense_rows_are_chosen_only_where_cublas_takes_the_inputs(fake_cublas, as_gpu, monkeypatch):
    f32, f64 = np.ones((4, 5), np.float32), np.ones((5, 3), np.float64)
    W, b = np.ones((5, 3), np.float32), np.ones(3, np.float32)
    assert dispatch.select("Matmul", f32, W) is dispatch.TABLE["Matmul"]
    assert dispatch.select("Linear", np.ones((2, 4, 5), np.float32), W, b) is dispatch.TABLE["Linear"]
    assert dispatch.select("LinearRelu", f32, W) is dispatch.TABLE["LinearRelu"]
    assert dispatch.explain("Linear", f32, W, b).startswith("kernel: ")
    why_not = {
        "batched (3-D) matmul": ("Matmul", np.ones((2, 4, 5), np.float32), np.ones((2, 5, 3), np.float32)),
        "mixed dtypes": ("Linear", f32, f64),
        "non-contiguous weight": ("Linear", f32, np.ones((3, 5), np.float32).T),
        "non-contiguous x": ("LinearRelu", np.ones((5, 4), np.float32).T, W, b),
        "integers": ("Matmul", f32.astype(np.int32), W.astype(np.int32)),
        "mismatched shapes": ("Linear", f32, np.ones((4, 3), np.float32)),
        "a bias of the wrong shape": ("Linear", f32, W, np.ones(5, np.float32)),
    }
    for case, (op, *arrays) in why_not.items():
        assert dispatch.select(op, *arrays) is None, case
        assert dispatch.explain(op, *arrays) == f"xp code on CuPy: {op}'s kernel takes {dispatch.TABLE[op].takes}"
    assert "2-D a (m, k) and b (k, n)" in dispatch.TABLE["Matmul"].takes
    assert "C-contiguous float32 or float64 arrays of one dtype" in dispatch.TABLE["Linear"].takes
    monkeypatch.setattr(dispatch, "_device", lambda a: 1 if a is W else 0)  # W on another device
    assert dispatch.select("Linear", f32, W, b) is None


def test_a_shape_mismatch_reaches_the_ops_own_error(fake_cublas, as_gpu):
    x, W = mv.tensor(np.ones((4, 5), np.float32)), mv.tensor(np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match="linear: shapes .* do not match"):
        F.linear(x, W)
    assert not fake_cublas.calls


def test_one_gemm_handle_per_device(fake_cublas, monkeypatch):
    first = dispatch.gemm_handle()
    assert dispatch.gemm_handle() is first  # kept: it must exist before a capture
    live = fake_cublas.fake_live_handles()
    monkeypatch.setattr(dispatch, "_current_device", lambda: 1)
    second = dispatch.gemm_handle()
    assert second is not first and fake_cublas.fake_live_handles() == live + 1
    assert dispatch.gemm_handle() is second


def test_a_missing_libcublas_is_one_clear_error(fake_cublas, as_gpu, monkeypatch, tmp_path):
    """No silent fallback to cupy.matmul (which a CUDA graph could not capture): the error of
    cublas.load_library, naming what it tried, reaches the caller."""
    missing = str(tmp_path / "libcublas.so.13")
    monkeypatch.setattr(cublas, "library_candidates", lambda major=None: [missing])
    x, W = mv.tensor(np.ones((4, 5), np.float32)), mv.tensor(np.ones((5, 3), np.float32))
    for _ in range(2):  # and again: no handle was kept
        with pytest.raises(RuntimeError, match=f"libcublas was not found.*{re.escape(missing)}.*MINIVAE_CUBLAS"):
            F.linear(x, W)
    assert dispatch._gemms == {}


# ------------------------------------------------------------------------------ Bernoulli log-likelihood
def _row_against_numpy(fake_gpu, monkeypatch, fn, op, kernel, arrays, needs, g):
    """fn's output and input gradients (for upstream ``g``) with the table taking the arrays for
    CuPy's, against the op's NumPy code, to float rounding; the launches: ``kernel``'s forward,
    then its backward."""
    results = []
    for gpu in (True, False):
        tensors = [mv.Tensor(a.copy(), requires_grad=need) for a, need in zip(arrays, needs)]
        with dispatch_table(monkeypatch, gpu):
            out = fn(*tensors)
            assert (out._node.fn is dispatch.TABLE[op]) == gpu
            out.backward(g)
        results.append([out.data] + [t.grad for t in tensors if t.requires_grad])
    sfx = "f32" if g.dtype == np.float32 else "f64"
    assert [c[0] for c in fake_gpu[1]] == [f"{kernel}_fwd_{sfx}", f"{kernel}_bwd_{sfx}"]
    for got, want in zip(*results):
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, **TOL[g.dtype.type])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("logits_shape, x_shape", [((6, 13), (6, 13)), ((1, 6, 13), (6, 13)),
                                                   ((3, 6, 13), (6, 13))])
@pytest.mark.parametrize("x_needs_grad", [False, True])
def test_the_bernoulli_row_equals_the_numpy_op(fake_gpu, monkeypatch, dtype, logits_shape, x_shape, x_needs_grad):
    """The decoder's log-likelihood on its kernels against the op's NumPy code: per-row sums and
    the gradients of logits (and of the images, when they need one: summed over the samples),
    to float rounding; one launch forward and one backward."""
    rng = np.random.default_rng(7)
    logits = (4 * rng.standard_normal(logits_shape)).astype(dtype)
    x = (rng.random(x_shape) < 0.5).astype(dtype)
    g = rng.standard_normal(logits_shape[:-1]).astype(dtype)
    _row_against_numpy(fake_gpu, monkeypatch, F.bernoulli_log_prob, "BernoulliLogProb", "mv_bernoulli",
                       [logits, x], (True, x_needs_grad), g)


def test_the_bernoulli_row_takes_images_of_the_logits_trailing_shape(as_gpu):
    logits, x = np.zeros((3, 6, 13), np.float32), np.zeros((6, 13), np.float32)
    assert dispatch.select("BernoulliLogProb", logits, x) is dispatch.TABLE["BernoulliLogProb"]
    for case, x_other in {"x over rows of logits": np.zeros((6, 1), np.float32),
                          "x of more axes": np.zeros((2, 3, 6, 13), np.float32),
                          "another dtype": np.zeros((6, 13))}.items():
        assert dispatch.select("BernoulliLogProb", logits, x_other) is None, case


# ------------------------------------------------------------------------------ reparameterization and KL
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("needs", [(True, True), (False, True)])
def test_the_reparameterization_row_equals_the_numpy_op(fake_gpu, monkeypatch, dtype, needs):
    """z = mu + exp(logvar / 2) eps on its kernels (eps regenerated in backward) against the op's
    NumPy code: z and the gradients of mu and logvar, to float rounding; one launch forward and
    one backward."""
    rng = np.random.default_rng(9)
    arrays = [rng.standard_normal((6, 13)).astype(dtype), rng.uniform(-2, 1, (6, 13)).astype(dtype)]
    g = rng.standard_normal((6, 13)).astype(dtype)
    _row_against_numpy(fake_gpu, monkeypatch, lambda mu, lv: F.reparameterize(mu, lv, Noise(5, 7)),
                       "ReparameterizeNoise", "mv_reparam", arrays, needs, g)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_reparameterization_row_regenerates_no_noise_for_mu_alone(fake_gpu, monkeypatch, dtype):
    """With a logvar that needs no gradient, dmu = g is the whole backward: no launch."""
    rng = np.random.default_rng(9)
    mu = mv.Tensor(rng.standard_normal((6, 13)).astype(dtype), requires_grad=True)
    logvar = mv.Tensor(rng.uniform(-2, 1, (6, 13)).astype(dtype))
    g = rng.standard_normal((6, 13)).astype(dtype)
    with dispatch_table(monkeypatch, True):
        F.reparameterize(mu, logvar, Noise(5, 7)).backward(g)
    np.testing.assert_array_equal(mu.grad, g)
    assert [c[0] for c in fake_gpu[1]] == [f"mv_reparam_fwd_{'f32' if dtype == np.float32 else 'f64'}"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("needs", [(True, True), (False, True), (True, False)])
def test_the_kl_row_equals_the_numpy_op(fake_gpu, monkeypatch, dtype, needs):
    """KL(N(mu, e^logvar) || N(0, I)) per row on its kernels against the op's NumPy code: the KL
    and the gradients of mu and logvar (each reaching its own input), to float rounding; one
    launch forward and one backward."""
    rng = np.random.default_rng(10)
    arrays = [rng.standard_normal((3, 6, 13)).astype(dtype), rng.uniform(-2, 1, (3, 6, 13)).astype(dtype)]
    g = rng.standard_normal((3, 6)).astype(dtype)
    _row_against_numpy(fake_gpu, monkeypatch, F.kl_normal_std, "KLNormalStd", "mv_kl", arrays, needs, g)


# ------------------------------------------------------------------------------ Gaussian log-density
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shapes", [((6, 13), (6, 13), (6, 13)), ((3, 6, 13), (6, 13), (6, 13)),
                                    ((3, 6, 13), (), ()), ((6, 13), (13,), (6, 13))])
@pytest.mark.parametrize("needs", [(True, True, True), (True, False, False)])
def test_the_gaussian_row_equals_the_numpy_op(fake_gpu, monkeypatch, dtype, shapes, needs):
    """The log-density under a diagonal Gaussian on its kernels against the op's NumPy code: per-row
    values and the gradients of x, mu and logvar (summed by the engine over the axes mu and
    logvar repeat along), to float rounding; one launch forward and one backward."""
    rng = np.random.default_rng(8)
    arrays = [rng.normal(size=shapes[0]), 0.5 * rng.normal(size=shapes[1]), rng.uniform(-2, 1, size=shapes[2])]
    arrays = [np.asarray(a, dtype) for a in arrays]
    g = rng.standard_normal(shapes[0][:-1]).astype(dtype)
    _row_against_numpy(fake_gpu, monkeypatch, F.gaussian_log_prob, "GaussianLogProb", "mv_gaussian", arrays,
                       needs, g)


def test_the_gaussian_row_takes_parameters_of_xs_trailing_shape(as_gpu):
    x, row = np.zeros((3, 6, 13), np.float32), dispatch.TABLE["GaussianLogProb"]
    for case, (mu, lv) in {"same": (x, x), "a sample's": (x[0], x[0]), "0-d": (x[0, 0, 0], x[0, 0, 0]),
                           "one row for all": (x[0, 0], x[0])}.items():
        assert dispatch.select("GaussianLogProb", x, mu, lv) is row, case
    for case, (mu, lv) in {"over rows": (np.zeros((6, 1), np.float32), x),
                           "another dtype": (x, x.astype(np.float64))}.items():
        assert dispatch.select("GaussianLogProb", x, mu, lv) is None, case


#: The gradcheck cases of the log-density ops whose inputs their rows do not take, so that on
#: CuPy they run the xp code: the rows take targets (a Gaussian's mu and logvar) of the first
#: input's shape or of its trailing axes, and these logits broadcast against larger targets.
#: tests/test_gpu.py gradchecks every case on the device and expects the row for all the others.
XP_CODE_CASES = {("BernoulliLogProb", "logits (4,1) against soft targets (4,3), both grads")}


@pytest.mark.parametrize("op", [BernoulliLogProb, GaussianLogProb])
def test_the_log_density_rows_take_every_gradcheck_case_but_the_named_ones(as_gpu, op):
    """On CuPy, every gradcheck case of the op runs its row, but those of XP_CODE_CASES."""
    for name, _, specs in gradcheck_cases.CASES[op]:
        arrays = [t.data for t in gradcheck_cases.build(specs, gradcheck_cases.rng_for(op, name))]
        want = None if (op.__name__, name) in XP_CODE_CASES else dispatch.TABLE[op.__name__]
        assert dispatch.select(op.__name__, *arrays) is want, name


# ------------------------------------------------------------------------------ log-sum-exp
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, axis, keepdims", [((5, 7), 0, False), ((5, 7), (0,), True), ((40, 3, 4), -3, False),
                                                   ((6,), None, False), ((6,), 0, True), ((1, 7), 0, False)])
def test_the_logsumexp_row_equals_the_numpy_op(fake_gpu, monkeypatch, dtype, shape, axis, keepdims):
    """The log-sum-exp over the leading axis on its kernels against the op's NumPy code (the IWAE
    bound's form): values and gradients to float rounding, a column of -inf giving -inf (and
    the op's NaN gradient, exp(-inf - -inf)); one launch forward and one backward."""
    rng = np.random.default_rng(11)
    x = (10 * rng.standard_normal(shape)).astype(dtype)
    if len(shape) > 1:
        x[:, 1] = -np.inf
    g = rng.standard_normal(np.sum(x, axis=axis, keepdims=keepdims).shape).astype(dtype)
    with np.errstate(divide="ignore", invalid="ignore"):  # (NumPy's log(0) and -inf - -inf)
        _row_against_numpy(fake_gpu, monkeypatch, lambda t: F.logsumexp(t, axis=axis, keepdims=keepdims),
                           "LogSumExp", "mv_logsumexp", [x], (True,), g)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_logsumexp_rows_gradient_keeps_its_precision_far_from_0(fake_gpu, monkeypatch, dtype):
    """The kernels' gradient equals the op's NumPy code's, and the float64 formula, to an ulp or
    two, for columns whose maximum is large next to a column of ordinary values: exp(x - out) with
    out = m + log(sum) rounded to x's precision loses the log term (float32 at 1e8 gave 1 for
    each of two equal entries, not 1/2; at 1e7, 0.37; near -3000, errors of 1e-4)."""
    big = 1e8 if dtype == np.float32 else 1e17
    columns = [[big, big, -np.inf], [1e7, 1e7, 1e7 - 1], [-3000.0, -3000.5, -3001.25], [0.5, -1.0, 2.0]]
    x = np.ascontiguousarray(np.array(columns, dtype).T)  # (3 samples, 4 columns)
    g = np.array([1.0, 2.0, -1.5, 0.75], dtype)
    grads = {}
    for gpu in (True, False):
        t = mv.Tensor(x.copy(), requires_grad=True)
        with dispatch_table(monkeypatch, gpu):
            out = F.logsumexp(t, axis=0)
            assert (out._node.fn is dispatch.TABLE["LogSumExp"]) == gpu
            out.backward(g)
        grads[gpu] = t.grad
    x64 = x.astype(np.float64)
    e = np.exp(x64 - x64.max(axis=0))
    want = e / e.sum(axis=0) * g
    np.testing.assert_allclose(grads[True], grads[False], rtol=4 * np.finfo(dtype).eps, atol=0)
    np.testing.assert_allclose(grads[True], want, rtol=4 * np.finfo(dtype).eps, atol=0)


def test_the_logsumexp_row_takes_the_leading_axis_alone(as_gpu):
    x, row = np.zeros((3, 4, 5), np.float32), dispatch.TABLE["LogSumExp"]
    for axis in (0, -3, (0,), (-3,), np.int64(0), [0]):
        assert dispatch.select("LogSumExp", x, axis=axis, keepdims=False) is row, axis
    assert dispatch.select("LogSumExp", x[0, 0], axis=None) is row  # a vector: its one axis
    for case, (a, axis) in {"another axis": (x, 1), "two axes": (x, (0, 1)), "all axes": (x, None),
                            "a float axis": (x, 0.0), "a bool axis": (x, False), "a bool in a tuple": (x, (False,)),
                            "no rows": (x[:0], 0), "a 0-d array": (x[0, 0, 0], None),
                            "integers": (x.astype(np.int32), 0)}.items():
        assert dispatch.select("LogSumExp", a, axis=axis) is None, case


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, axis", [((5, 10), -1), ((3, 5, 10), 2), ((7,), 0), ((40, 1), -1)])
def test_the_log_softmax_row_equals_the_numpy_op(fake_gpu, monkeypatch, dtype, shape, axis):
    """A classifier's log-softmax over its classes on its kernels against the op's NumPy code:
    values and gradients to float rounding (a single class gives 0 and a zero gradient); one
    launch forward and one backward."""
    rng = np.random.default_rng(12)
    x = (10 * rng.standard_normal(shape)).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    _row_against_numpy(fake_gpu, monkeypatch, lambda t: F.log_softmax(t, axis=axis), "LogSoftmax",
                       "mv_log_softmax", [x], (True,), g)


def test_the_log_softmax_row_takes_the_last_axis_alone(as_gpu):
    x, row = np.zeros((3, 4, 5), np.float32), dispatch.TABLE["LogSoftmax"]
    for axis in (-1, 2, np.int64(-1)):
        assert dispatch.select("LogSoftmax", x, axis=axis) is row, axis
    for case, (a, axis) in {"another axis": (x, 0), "no classes": (x[..., :0], -1), "a 0-d array": (x[0, 0, 0], -1),
                            "a float axis": (x, -1.0), "a bool axis": (x[0], True),
                            "integers": (x.astype(np.int32), -1)}.items():
        assert dispatch.select("LogSoftmax", a, axis=axis) is None, case


def test_a_bool_axis_is_refused_on_the_gpu_as_on_the_cpu(fake_gpu, monkeypatch):
    """A bool is no axis (minivae.ops.axes): the log-sum-exp and log-softmax rows leave it to the
    xp code, which refuses it, rather than run their kernels over axis 0 or 1."""
    x = mv.tensor(np.zeros((3, 4), np.float32))
    for gpu in (False, True):
        with dispatch_table(monkeypatch, gpu):
            with pytest.raises(TypeError, match="an axis must be an integer, got False"):
                F.logsumexp(x, axis=False)
            with pytest.raises(TypeError, match="an axis must be an integer, got True"):
                F.log_softmax(x, axis=True)
    assert not fake_gpu[1]  # no launch


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_relu_row_equals_the_numpy_op(fake_gpu, monkeypatch, dtype):
    """A ReLU on its own (not a dense layer's) on the kernels of dense.cu against the op's NumPy
    code, bit for bit, on a non-contiguous input with zeros and a NaN: output and gradient; one
    launch forward and one backward."""
    x = np.random.default_rng(9).standard_normal((7, 6)).astype(dtype)
    x[::3, 1] = 0
    x[2, 2] = np.nan
    g = np.random.default_rng(10).standard_normal((6, 7)).astype(dtype)
    results = []
    for gpu in (True, False):
        t = mv.Tensor(x.copy(), requires_grad=True)
        with dispatch_table(monkeypatch, gpu):
            out = F.relu(t.T)
            assert (out._node.fn is dispatch.TABLE["Relu"]) == gpu
            out.backward(g)
        results.append((out.data, t.grad))
    sfx = "f32" if dtype == np.float32 else "f64"
    assert [c[0] for c in fake_gpu[1]] == [f"mv_bias_act_{sfx}", f"mv_relu_grad_{sfx}"]
    for got, want in zip(*results):
        np.testing.assert_array_equal(got, want)
