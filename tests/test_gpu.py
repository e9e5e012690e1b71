"""GPU tests (``pytest -m gpu``; deselected by default, skipped without CuPy or a device).

The kernels against the NumPy twin on the same noise address: Philox words bit-exact, uniforms
bit-exact, normals and z to float32 rounding; float64 finite-difference checks of the kernel
gradients on the device; the kernel-backed ops through ``minivae.gradcheck``; one VAE training
step on the GPU against the same step on the CPU; the dense-layer rows on cuBLAS against
cupy.matmul, through ``minivae.gradcheck``, and captured in a CUDA graph against the eager bits;
the Bernoulli and Gaussian log-densities and the dense layers' bias and ReLU kernels against
NumPy.
"""
import copy
import math

import numpy as np
import pytest

import minivae.random as mr
from test_dispatch import XP_CODE_CASES
from test_graph_mode import GRAPH_CASES, eager_and_graph_runs
from test_kernels import (ADAM_IDS, ADAM_SETTINGS, _documented_row_sum, adam_case, assert_same_adam_state,
                          check_offset_views)

pytestmark = pytest.mark.gpu

cp = pytest.importorskip("cupy", reason="CuPy is not installed (pip install 'minivae[gpu]')")
import minivae.gpu as G  # noqa: E402
from minivae.gpu.kernels import TILE  # noqa: E402

if not G.is_available():
    pytest.skip("CuPy is installed but no CUDA device is visible", allow_module_level=True)

# float32: the device computes logf/sqrtf/sincospif/expf (each <= 2 ulp) where the twin rounds a
# float64 result once: a few float32 ulps apart. float64: a few float64 ulps.
F32 = dict(rtol=4e-6, atol=2e-6)
F64 = dict(rtol=1e-13, atol=1e-13)
TOL = {np.float32: F32, np.float64: F64}
DTYPES = [np.float32, np.float64]
ADDRESSES = [(0, 0, 0), (1234, 7, 0), ((1 << 64) - 1, (1 << 64) - 1, (1 << 32) - 1), (2 ** 40 + 3, 2 ** 33, 5)]


def host(a):
    return cp.asnumpy(a)


def inputs(shape, dtype, seed=0, lo=-4.0, hi=2.0):
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=shape).astype(dtype)
    logvar = rng.uniform(lo, hi, size=shape).astype(dtype)
    return mu, logvar


# ------------------------------------------------------------------------------ the generator
@pytest.mark.parametrize("n", [1, 3, 4, 5, 1023, 1024, 1025, (1 << 20) + 3])
@pytest.mark.parametrize("address", ADDRESSES)
def test_philox_words_bit_exact(n, address):
    seed, offset, stream = address
    np.testing.assert_array_equal(host(G.philox_words(n, seed, offset, stream)),
                                  mr.philox_words(n, seed, offset, stream))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("address", ADDRESSES)
def test_uniform_bit_exact_and_normal_close(dtype, address):
    seed, offset, stream = address
    for shape in [(7,), (100, 50), (3, 333, 5)]:
        np.testing.assert_array_equal(host(G.uniform(shape, seed, offset, dtype, stream)),
                                      mr.uniform(shape, seed, offset, dtype, stream))
        got = host(G.normal(shape, seed, offset, dtype, stream))
        assert got.dtype == dtype
        np.testing.assert_allclose(got, mr.normal(shape, seed, offset, dtype, stream), **TOL[dtype])


def test_normal_large_draw_statistics_and_ulps():
    n = 10_000_000
    got = G.normal(n, 99, 1, np.float32)
    assert abs(float(got.mean())) < 2e-3 and abs(float(got.var()) - 1) < 3e-3
    # where it can be checked cheaply: the first million against the twin, in ulps
    ref = mr.normal(1_000_000, 99, 1, np.float32)
    diff = np.abs(host(got[:1_000_000]).astype(np.float64) - ref)
    ulps = diff / np.spacing(np.maximum(np.abs(ref), np.float32(1e-3)))
    assert ulps.max() <= 8, ulps.max()


# ------------------------------------------------------------------------------ kernels vs twin
SHAPES = [(1,), (5,), (1025,), (100, 50), (45, 50), (7, 3), (700, 3), (1030, 2), (3, 2, 50), (64, 1),
          (2, 1001), (5, 784), (2, 4101), (3, 5000), (1000, 1000)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_kernels_match_twin(dtype, shape):
    tol = TOL[dtype]
    seed, offset, stream = 2024, 11, 0
    mu, logvar = inputs(shape, dtype, 1)
    dz = inputs(shape, dtype, 2)[0]
    gkl = inputs(shape[:-1], dtype, 3)[0]
    eps = mr.normal(shape, seed, offset, dtype).astype(np.float64)
    m, lv = mu.astype(np.float64), logvar.astype(np.float64)
    std = np.exp(0.5 * lv)
    want_z = m + std * eps
    want_kl = (0.5 * (m * m + np.expm1(lv) - lv)).sum(-1)
    d_mu, d_lv, d_dz, d_g = (cp.asarray(a) for a in (mu, logvar, dz, gkl))
    kl_tol = dict(rtol=tol["rtol"] * 4 * math.sqrt(shape[-1]), atol=tol["atol"])

    z = G.reparameterize_forward(d_mu, d_lv, seed, offset, stream)
    assert z.dtype == dtype and z.shape == shape
    np.testing.assert_allclose(host(z), want_z, **tol)
    dmu, dlv = G.reparameterize_backward(d_dz, d_lv, seed, offset, stream)
    np.testing.assert_array_equal(host(dmu), dz)
    np.testing.assert_allclose(host(dlv), dz * eps * std * 0.5, **tol)

    kl = G.kl_normal_std_forward(d_mu, d_lv)
    assert kl.shape == shape[:-1]
    np.testing.assert_allclose(host(kl), want_kl, **kl_tol)
    dmu, dlv = G.kl_normal_std_backward(d_g, d_mu, d_lv)
    g = gkl.astype(np.float64)[..., None]
    np.testing.assert_allclose(host(dmu), g * m, **tol)
    np.testing.assert_allclose(host(dlv), g * 0.5 * np.expm1(lv), **tol)

    z2, kl2 = G.reparameterize_kl_forward(d_mu, d_lv, seed, offset, stream)
    np.testing.assert_allclose(host(z2), want_z, **tol)
    np.testing.assert_allclose(host(z2), host(z), rtol=2 * np.finfo(dtype).eps, atol=0)
    np.testing.assert_allclose(host(kl2), want_kl, **kl_tol)
    dmu, dlv = G.reparameterize_kl_backward(d_dz, d_g, d_mu, d_lv, seed, offset, stream)
    np.testing.assert_allclose(host(dmu), dz + g * m, **tol)
    np.testing.assert_allclose(host(dlv), dz * eps * std * 0.5 + g * 0.5 * np.expm1(lv),
                               rtol=tol["rtol"], atol=10 * tol["atol"])


def test_kernels_are_deterministic():
    mu, logvar = (cp.asarray(a) for a in inputs((999, 77), np.float32, 4))
    z1, kl1 = G.reparameterize_kl_forward(mu, logvar, 5, 6)
    z2, kl2 = G.reparameterize_kl_forward(mu, logvar, 5, 6)
    assert bool((z1 == z2).all()) and bool((kl1 == kl2).all())
    assert bool((G.kl_normal_std_forward(mu, logvar) == G.kl_normal_std_forward(mu, logvar)).all())


@pytest.mark.parametrize("dtype", DTYPES)
def test_float32_kernels_flush_subnormals_and_float64_kernels_keep_them(dtype):
    """CuPy compiles every kernel with -ftz=true (see minivae/gpu/_source.py): a subnormal mean
    with a standard deviation of 0 comes out of the reparameterization as 0 in float32 and as it
    went in in float64 (NumPy keeps it in both)."""
    tiny = np.finfo(dtype).smallest_normal / 4
    mu, logvar = cp.full((8,), tiny, dtype), cp.full((8,), -2000.0, dtype)  # exp(-1000) is 0
    z = host(G.reparameterize_forward(mu, logvar, 0))
    np.testing.assert_array_equal(z, np.full(8, 0.0 if dtype == np.float32 else tiny, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [2, 3, 50, 784, 1025, 4101, 9001])
def test_row_sums_follow_the_documented_order(dtype, D):
    """The KL of a row is its device-computed terms summed in the order documented in
    kernels/chunks.cuh, bit for bit (the terms themselves: rows of D = 1, whose sum is the term)."""
    B = 37
    mu, logvar = (cp.asarray(a) for a in inputs((B, D), dtype, 11))
    terms = host(G.kl_normal_std_forward(mu.reshape(-1, 1), logvar.reshape(-1, 1)))
    lanes = 1
    while lanes < 32 and 8 * lanes < min(D, TILE):
        lanes *= 2
    want = np.array([_documented_row_sum(terms[r * D:(r + 1) * D], lanes, r * D, TILE) for r in range(B)],
                    dtype)
    np.testing.assert_array_equal(host(G.kl_normal_std_forward(mu, logvar)), want)
    np.testing.assert_array_equal(host(G.reparameterize_kl_forward(mu, logvar, 3, 4)[1]), want)


def test_row_forward_variants_follow_the_documented_order():
    """Every candidate design of the forward row kernels (benchmarks/ab_row_kernels.py, compiled
    with its own options): kl is the device's terms summed in the documented order of its tile,
    bit for bit, and z the reparameterization kernel's bit for bit."""
    from test_kernels import _ab_script

    ab = _ab_script()
    for name in ab.VARIANTS:
        var, tile = ab.Variant(cp, name), ab.tile_of(name)
        for dtype in DTYPES:
            for D in (1, 3, 50, 784, 5001):
                B = 37
                mu, logvar = (cp.asarray(a) for a in inputs((B, D), dtype, 12))
                terms = host(G.kl_normal_std_forward(mu.reshape(-1, 1), logvar.reshape(-1, 1)))
                lanes = 1
                while lanes < 32 and 8 * lanes < min(D, tile):
                    lanes *= 2
                want = np.array([_documented_row_sum(terms[r * D:(r + 1) * D], lanes, r * D, tile)
                                 for r in range(B)], dtype)
                z, kl = cp.full((B, D), np.nan, dtype), cp.full((B,), np.nan, dtype)
                var.run("fused_fwd", mu, logvar, z, kl)
                np.testing.assert_array_equal(host(kl), want, err_msg=f"{name} {dtype.__name__} D={D}")
                z_ref = G.reparameterize_forward(mu, logvar, ab.SEED, ab.OFFSET, ab.STREAM)
                np.testing.assert_array_equal(host(z), host(z_ref), err_msg=f"{name} {dtype.__name__} D={D}")
                kl = cp.full((B,), np.nan, dtype)
                var.run("kl_fwd", mu, logvar, None, kl)
                np.testing.assert_array_equal(host(kl), want, err_msg=f"{name} {dtype.__name__} D={D}")


def test_noncontiguous_inputs():
    mu, logvar = (cp.asarray(a) for a in inputs((50, 40), np.float32, 5))
    z = G.reparameterize_forward(mu.T, logvar.T, 3)
    want = G.reparameterize_forward(cp.ascontiguousarray(mu.T), cp.ascontiguousarray(logvar.T), 3)
    assert bool((z == want).all())


@pytest.mark.parametrize("dtype", DTYPES)
def test_views_that_start_off_a_vector_boundary_give_the_bits_of_aligned_copies(dtype):
    """C-contiguous views whose data does not start on a 16-byte boundary (x[1:] of rows of odd
    length) reach the kernels as they are: their chunks take the element-wise loads and stores
    (mv_chunk_whole tests the address), never a misaligned float4 / double2, and the results are
    those of aligned copies bit for bit."""
    check_offset_views(G, cp, host, dtype)


# ------------------------------------------------------------------------------ gradients on the device
def _directional_check(f, grads, args, rng, n_dir=6, eps=1e-6):
    """<grad_i, v> against (f(x_i + eps v) - f(x_i - eps v)) / 2eps, float64, on the device."""
    for i, g in enumerate(grads):
        for _ in range(n_dir):
            v = cp.asarray(rng.uniform(0.5, 1.5, args[i].shape) * rng.choice([-1.0, 1.0], args[i].shape))
            plus = list(args)
            minus = list(args)
            plus[i] = args[i] + eps * v
            minus[i] = args[i] - eps * v
            num = (f(*plus) - f(*minus)) / (2 * eps)
            ana = float((g * v).sum())
            assert abs(ana - num) <= 1e-5 + 1e-6 * abs(num), (i, ana, num)


@pytest.mark.parametrize("shape", [(4, 3), (33, 50), (2, 5, 7)])
def test_kernel_gradients_float64_on_device(shape):
    rng = np.random.default_rng(0)
    mu, logvar = (cp.asarray(a) for a in inputs(shape, np.float64, 6))
    u = cp.asarray(rng.standard_normal(shape))
    w = cp.asarray(rng.standard_normal(shape[:-1]))
    seed, offset = 31, 4

    def f(mu, logvar):  # <u, z> + <w, kl>, the noise fixed by its address
        z, kl = G.reparameterize_kl_forward(mu, logvar, seed, offset)
        return float((u * z).sum() + (w * kl).sum())

    grads = G.reparameterize_kl_backward(u, w, mu, logvar, seed, offset)
    _directional_check(f, grads, [mu, logvar], rng)
    # the separate kernels give the same gradients
    g_mu, g_lv = G.reparameterize_backward(u, logvar, seed, offset)
    k_mu, k_lv = G.kl_normal_std_backward(w, mu, logvar)
    cp.testing.assert_allclose(grads[0], g_mu + k_mu, rtol=1e-13, atol=1e-13)
    cp.testing.assert_allclose(grads[1], g_lv + k_lv, rtol=1e-13, atol=1e-13)


def test_ops_gradcheck_float64_on_device():
    """minivae.gradcheck of the kernel-backed ops, on GPU tensors in float64."""
    import minivae as mv
    import minivae.functional as F

    mu_np, lv_np = inputs((6, 5), np.float64, 7)
    mu = mv.tensor(mu_np, requires_grad=True).to("gpu")
    logvar = mv.tensor(lv_np, requires_grad=True).to("gpu")
    noise = mr.Noise(77, 3)
    assert mv.gradcheck(lambda m, lv: F.reparameterize(m, lv, noise), mu, logvar)
    assert mv.gradcheck(lambda m, lv: F.kl_normal_std(m, lv), mu, logvar)
    # the fused pair as one two-output op (a random upstream gradient for z and for kl)
    assert mv.gradcheck(lambda m, lv: F.reparameterize_kl(m, lv, noise), mu, logvar)
    assert mv.gradcheck(lambda m, lv: F.reparameterize_kl(m, lv, noise, samples=3), mu, logvar)
    # MC samples: z of shape (S, B, D) from (B, D) parameters
    assert mv.gradcheck(lambda m, lv: F.reparameterize(m, lv, noise, shape=(3, 6, 5)), mu, logvar)
    # the same eps on both devices
    z_gpu = F.reparameterize(mu, logvar, noise).numpy()
    z_cpu = F.reparameterize(mv.tensor(mu_np), mv.tensor(lv_np), noise).numpy()
    np.testing.assert_allclose(z_gpu, z_cpu, rtol=1e-13, atol=1e-13)


# ------------------------------------------------------------------------------ a training step
def test_vae_training_step_gpu_matches_cpu():
    """One training step of the MNIST VAE (float32) on the GPU and on the CPU from the same
    weights, batch and noise seed: loss, gradients and updated weights agree to float32 rounding.

    Written against minivae.models.VAE / minivae.optim. With the GPU dispatch of the
    ops, the GPU step runs our kernels and the CPU step the NumPy twin, on the same eps bits.
    SGD, not Adam, for the comparison: Adam's first step is ~lr * sign(g), which a rounding
    difference flips wherever a gradient is ~0.
    """
    models = pytest.importorskip("minivae.models")
    optim = pytest.importorskip("minivae.optim")
    import minivae as mv

    rng = np.random.default_rng(0)
    cpu_model = models.VAE(x_dim=784, z_dim=50, hidden=(512, 256), rng=np.random.default_rng(1))
    gpu_model = copy.deepcopy(cpu_model).to("gpu")
    x = (rng.uniform(size=(100, 784)) < 0.3).astype(np.float32)

    results = []
    for model, device in ((cpu_model, "cpu"), (gpu_model, "gpu")):
        params = list(model.parameters())
        opt = optim.SGD(params, lr=0.1)
        noise = mr.Generator(seed=123)
        loss, _ = model.loss(mv.tensor(x).to(device), noise)
        loss.backward()
        grads = [np.asarray(p.grad.get() if hasattr(p.grad, "get") else p.grad) for p in params]
        opt.step()
        assert noise.offset >= 1
        results.append((float(loss.item()), grads, model.state_dict()))
    (loss_c, g_c, w_c), (loss_g, g_g, w_g) = results
    assert loss_g == pytest.approx(loss_c, rel=1e-5)
    for i, (a, b) in enumerate(zip(g_c, g_g)):
        assert a.dtype == b.dtype == np.float32
        scale = float(np.abs(a).max())
        assert float(np.abs(a - b).max()) <= 1e-4 * scale + 1e-7, f"gradient {i}"
    assert w_c.keys() == w_g.keys()
    for k in w_c:
        np.testing.assert_allclose(np.asarray(w_g[k]), np.asarray(w_c[k]), rtol=1e-5, atol=1e-6, err_msg=k)


# ------------------------------------------------------------------------------ every model, both devices
def _model_pair(name):
    """The same small float64 model twice (same weights): one on the CPU, one on the GPU."""
    from minivae.gradcheck_cases import MODEL_SIZES, SMALL_MODEL
    from minivae.models import build_model

    sizes = dict(SMALL_MODEL, **MODEL_SIZES.get(name, {}))
    cpu_model = build_model(name, **dict(sizes, rng=np.random.default_rng(0))).astype(np.float64)
    return cpu_model, copy.deepcopy(cpu_model).to("gpu")


def _grads(model):
    return {n: cp.asnumpy(p.grad) if isinstance(p.grad, cp.ndarray) else p.grad
            for n, p in model.named_parameters() if p.requires_grad}


def _models():
    from minivae.models import MODELS

    return sorted(MODELS)


@pytest.mark.parametrize("name", _models())
def test_every_model_loss_gradients_and_log_weights_match_the_cpu(name):
    """Each model's training loss (labelled batch too for the semi-supervised ones), every
    parameter's gradient and the importance log-weights of evaluation, float64, on the GPU (our
    kernels, CuPy) against the CPU (the NumPy twin) with the same weights and noise address."""
    import minivae as mv

    cpu_model, gpu_model = _model_pair(name)
    rng = np.random.default_rng(1)
    x = (rng.uniform(size=(6, cpu_model.x_dim)) < 0.5).astype(np.float64)
    labels = np.arange(6) % 10
    semi = getattr(cpu_model, "semi_supervised", False)
    if semi:
        cpu_model.set_data_sizes(60, 4)
        gpu_model.set_data_sizes(60, 4)
    out = {}
    for model, device in ((cpu_model, "cpu"), (gpu_model, "gpu")):
        extra = {"labelled": (mv.tensor(x[:4]).to(device), mv.backend.to_device(labels[:4], device))} if semi else {}
        loss, _ = model.loss(mv.tensor(x).to(device), mv.random.Generator(seed=5), beta=0.7, **extra)
        assert loss.device == device
        loss.backward()
        with mv.no_grad():
            lw = model.log_weights(mv.tensor(x).to(device), 3, mv.random.Generator(seed=6))
        assert lw.device == device and lw.shape == (3, len(x))
        out[device] = (float(loss.item()), _grads(model), lw.numpy())
    (loss_c, g_c, lw_c), (loss_g, g_g, lw_g) = out["cpu"], out["gpu"]
    assert loss_g == pytest.approx(loss_c, rel=1e-10, abs=1e-10)
    assert g_c.keys() == g_g.keys() and g_c
    for k in g_c:
        np.testing.assert_allclose(g_g[k], g_c[k], rtol=1e-8, atol=1e-10 * (1 + np.abs(g_c[k]).max()), err_msg=k)
    np.testing.assert_allclose(lw_g, lw_c, rtol=1e-10, atol=1e-10)


def test_mixing_devices_in_one_op_raises():
    import minivae as mv

    a = mv.tensor(np.ones(3, np.float32))
    with pytest.raises(RuntimeError, match="different devices"):
        a.to("gpu") + a


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", ADAM_SETTINGS, ids=ADAM_IDS)
def test_adam_on_the_gpu_equals_the_cpu_bit_for_bit(kw, dtype):
    """The fused Adam kernel (kernels/adam.cu) against the NumPy update: the same bits after six
    steps (no fused multiply-add, IEEE division and square root on both devices; no value of
    this case is a float32 subnormal, which the device would flush to zero)."""
    import minivae as mv
    from minivae import optim

    start, grads = adam_case(dtype, shapes=((300, 50), (50,), (1,)))
    out = []
    for device in ("gpu", "cpu"):
        params = [mv.Tensor(a.copy(), requires_grad=True).to(device) for a in start]
        opt = optim.Adam(params, lr=1e-2, flush_every=0, **kw)
        for step in grads:
            for p, g in zip(params, step):
                p.grad = mv.backend.to_device(g, device)
            opt.step()
        out.append(([p.numpy() for p in params],
                    [{k: mv.backend.to_device(v, "cpu") for k, v in s.items() if hasattr(v, "shape")}
                     for s in opt.state]))
    assert_same_adam_state(*out[0], *out[1])


def test_eval_command_on_the_gpu_matches_the_cpu(tmp_path, monkeypatch):
    """`minivae eval RUN --device gpu`: the test ELBO and the k-sample log-likelihood of a run
    agree with the CPU evaluation (the same noise addresses; float32 rounding apart)."""
    import json

    from minivae import cli
    import minivae.data as data_module
    from test_train import small_data

    data = small_data(n_train=100, n_eval=20)
    monkeypatch.setattr(data_module, "load_mnist", lambda verbose=True: data)
    monkeypatch.setattr("minivae.train.load_mnist", lambda verbose=True: data)
    out = tmp_path / "run"
    assert cli.main(["train", "--epochs", "1", "--hidden", "16", "--z-dim", "2", "--batch-size", "50",
                     "--out", str(out), "--eval-k", "0", "--no-progress"]) == 0
    results = {}
    for device in ("cpu", "gpu"):
        assert cli.main(["eval", str(out), "--k", "8", "--device", device, "--no-progress"]) == 0
        results[device] = json.loads((out / "eval_k8.json").read_text())
    for key in ("test_elbo", "test_nll"):
        assert results["gpu"][key] == pytest.approx(results["cpu"][key], rel=1e-4), key


# ------------------------------------------------------------------------------ cuBLAS in a CUDA graph
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transa", [False, True])
@pytest.mark.parametrize("transb", [False, True])
def test_cublas_gemm_equals_cupy_matmul(dtype, transa, transb):
    from minivae.gpu.cublas import Gemm

    rng = np.random.default_rng(4)
    m, k, n = 37, 129, 65
    a = cp.asarray(rng.standard_normal((k, m) if transa else (m, k)).astype(dtype))
    b = cp.asarray(rng.standard_normal((n, k) if transb else (k, n)).astype(dtype))
    c0 = cp.asarray(rng.standard_normal((m, n)).astype(dtype))
    want = 0.5 * cp.matmul(a.T if transa else a, b.T if transb else b) + 2.0 * c0
    out = c0.copy()
    Gemm().gemm(a, b, out, transa=transa, transb=transb, alpha=0.5, beta=2.0)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(host(out), host(want), **tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cublas_gemms_captured_in_a_cuda_graph(dtype):
    """Two products and an elementwise op captured once and replayed: the graph reads the
    buffers' current contents (new inputs give the new product) and equals cupy.matmul."""
    from minivae.gpu.cublas import Gemm

    rng = np.random.default_rng(6)
    x = cp.asarray(rng.standard_normal((100, 784)).astype(dtype))
    w1 = cp.asarray(rng.standard_normal((784, 512)).astype(dtype) / 28)
    w2 = cp.asarray(rng.standard_normal((256, 512)).astype(dtype) / 22)
    h, r, y = cp.empty((100, 512), dtype), cp.empty((100, 512), dtype), cp.empty((100, 256), dtype)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        g = Gemm()  # handle and workspace before the capture
        g.gemm(x, w1, h)  # a first call outside the capture (cuBLAS's lazy set-up)
        stream.begin_capture()
        g.gemm(x, w1, h)
        cp.maximum(h, 0, out=r)
        g.gemm(r, w2, y, transb=True)
        graph = stream.end_capture()
    for trial in range(2):
        if trial:
            x[...] = cp.asarray(rng.standard_normal((100, 784)).astype(dtype))
            stream.synchronize()
        y.fill(cp.nan)
        graph.launch(stream)
        stream.synchronize()
        want = cp.matmul(cp.maximum(cp.matmul(x, w1), 0), w2.T)
        tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(host(y), host(want), **tol)


# ------------------------------------------------------------------------------ the dispatch table
@pytest.mark.parametrize("mc_samples", [1, 3])
def test_the_fused_kernels_run_in_a_vae_training_step(monkeypatch, mc_samples):
    """A VAE training step on the GPU runs the loss's ReparameterizeKL node on the fused kernels
    of the dispatch table (launches counted by wrapping the table's rows) and Adam as one launch
    over all parameters; the same step on the CPU gives the same loss to float32 rounding."""
    import dataclasses

    import minivae as mv
    from minivae import optim
    from minivae.gpu import dispatch
    from minivae.models import VAE

    counts = {}

    def counted(name, fn):
        def run(*args, **kwargs):
            counts[name] = counts.get(name, 0) + 1
            return fn(*args, **kwargs)
        return run

    for op in ("ReparameterizeKL", "Adam"):
        row = dispatch.TABLE[op]
        monkeypatch.setitem(dispatch.TABLE, op, dataclasses.replace(
            row, forward=counted(f"{op}.forward", row.forward),
            backward=row.backward and counted(f"{op}.backward", row.backward)))
    x = (np.random.default_rng(0).uniform(size=(100, 784)) < 0.5).astype(np.float32)
    losses = []
    for device in ("gpu", "cpu"):
        mv.nn.init.manual_seed(0)
        model = VAE(mc_samples=mc_samples).to(device)
        opt = optim.Adam(model.parameters(), lr=1e-3)
        loss, _ = model.loss(mv.tensor(x).to(device), mr.Generator(seed=3))
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if device == "gpu":
            assert counts == {"ReparameterizeKL.forward": 1, "ReparameterizeKL.backward": 1, "Adam.forward": 1}
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    mu = cp.zeros((100, 50), dtype=cp.float32)
    assert dispatch.explain("ReparameterizeKL", mu, mu).startswith("kernel: ")
    assert dispatch.explain("KLNormalStd", mu, mu[0]).startswith("xp code on CuPy")


# ------------------------------------------------------------------------------ data on the device
def test_epoch_permutations_on_the_gpu_are_the_cpu_ones():
    from minivae.data import epoch_permutation

    for n, seed, epoch in [(1, 0, 0), (7, 3, 1), (50000, 0, 0), (50000, 2**63 + 7, 149)]:
        gpu = epoch_permutation(n, seed=seed, epoch=epoch, device="gpu")
        assert isinstance(gpu, cp.ndarray) and gpu.dtype == cp.int64
        np.testing.assert_array_equal(host(gpu), epoch_permutation(n, seed=seed, epoch=epoch))


def test_gpu_loader_serves_the_cpu_loaders_batches_and_bits():
    """Given the seed and the epoch, the loader whose images live on the GPU serves the same
    images, in the same order, with the same binarized bits (and labels) as the CPU loader."""
    from minivae.data import MinibatchLoader

    rng = np.random.default_rng(0)
    k = rng.integers(0, 256, (1000, 784))
    k[rng.random(k.shape) < 0.7] = 0
    k[rng.random(k.shape) < 0.05] = 255
    x = np.divide(k, 255, dtype=np.float32)
    y = rng.integers(0, 10, 1000)
    for options in [{}, {"drop_last": True}, {"shuffle": False}, {"binarize": False}]:
        cpu = MinibatchLoader(x, 96, seed=5, y=y, **options)
        gpu = MinibatchLoader(x, 96, seed=5, y=y, device="gpu", **options)
        for epoch in (0, 1, 149):
            got = list(gpu.epoch(epoch))
            want = list(cpu.epoch(epoch))
            assert len(got) == len(want)
            for (xg, yg), (xc, yc) in zip(got, want):
                assert isinstance(xg, cp.ndarray) and xg.dtype == cp.float32
                np.testing.assert_array_equal(host(xg), xc)
                np.testing.assert_array_equal(host(yg), yc)


# ------------------------------------------------------------------------------ dense layers on cuBLAS
@pytest.mark.parametrize("name", ["Linear", "LinearRelu"])
def test_dense_rows_on_cublas_equal_cupy_matmul(name):
    """A Linear / LinearRelu node on CuPy float32 runs its row of the dispatch table (products on
    minivae.gpu.cublas): output and gradients agree with the same formulas on cupy.matmul."""
    import minivae as mv
    import minivae.functional as F
    from minivae.gpu import dispatch

    rng = np.random.default_rng(8)
    x0 = cp.asarray(rng.standard_normal((3, 100, 784)).astype(np.float32))  # 300 rows
    W0 = cp.asarray((rng.standard_normal((784, 512)) / 28).astype(np.float32))
    b0 = cp.asarray(rng.standard_normal(512).astype(np.float32))
    g = cp.asarray(rng.standard_normal((3, 100, 512)).astype(np.float32))
    x, W, b = (mv.Tensor(a.copy(), requires_grad=True) for a in (x0, W0, b0))
    assert dispatch.explain(name, x.data, W.data, b.data).startswith("kernel: ")
    out = (F.linear if name == "Linear" else F.linear_relu)(x, W, b)
    assert out._node.fn is dispatch.TABLE[name]
    out.backward(g)
    want_out = cp.matmul(x0, W0) + b0
    if name == "LinearRelu":
        want_out = cp.maximum(want_out, 0)
        g = g * (out.data > 0)  # the row's own mask: a product within rounding of 0 may differ
    g_rows = g.reshape(-1, 512)
    want = [want_out, cp.matmul(g, W0.T), cp.matmul(x0.reshape(-1, 784).T, g_rows), g_rows.sum(axis=0)]
    for got, w in zip([out.data, x.grad, W.grad, b.grad], want):
        assert isinstance(got, cp.ndarray) and got.dtype == np.float32 and got.shape == w.shape
        np.testing.assert_allclose(host(got), host(w), rtol=1e-4, atol=1e-4)


def test_dense_rows_gradcheck_float64_on_device():
    """minivae.gradcheck of the Linear, LinearRelu and 2-D Matmul cases on GPU tensors in float64,
    every node running its cuBLAS row."""
    import minivae as mv
    from minivae.gpu import dispatch
    from minivae.gradcheck_cases import CASES, build, rng_for
    from minivae.ops.linalg import Linear, LinearRelu, Matmul

    cases = [(op, name, fn, specs) for op in (Linear, LinearRelu, Matmul) for name, fn, specs in CASES[op]
             if op is not Matmul or name == "(3,4)@(4,5)"]
    assert len(cases) == 10
    for op, name, fn, specs in cases:
        inputs = [t.to("gpu") for t in build(specs, rng_for(op, name))]
        assert fn(*inputs)._node.fn is dispatch.TABLE[op.__name__], name
        assert mv.gradcheck(fn, *inputs), name


def test_log_density_rows_gradcheck_float64_on_device():
    """minivae.gradcheck of the Bernoulli and Gaussian log-densities' cases on GPU tensors in
    float64, and of inputs repeated under 3 samples (logits over (B, D) images; x over a sample's
    mu and logvar, and over a standard normal's 0-d zeros), every node running its row
    (bernoulli.cu, gaussian.cu) but those of the cases the rows do not take (XP_CODE_CASES of
    tests/test_dispatch.py), which run the op's xp code on CuPy."""
    import minivae as mv
    import minivae.functional as F
    from minivae.gpu import dispatch
    from minivae.gradcheck_cases import CASES, build, rng_for
    from minivae.ops.vae import BernoulliLogProb, GaussianLogProb

    for op in (BernoulliLogProb, GaussianLogProb):
        for name, fn, specs in CASES[op]:
            inputs = [t.to("gpu") for t in build(specs, rng_for(op, name))]
            runs = op if (op.__name__, name) in XP_CODE_CASES else dispatch.TABLE[op.__name__]
            assert fn(*inputs)._node.fn is runs, name
            assert mv.gradcheck(fn, *inputs), name
    rng = np.random.default_rng(12)

    def gpu(a):
        return mv.tensor(a, requires_grad=True).to("gpu")

    assert mv.gradcheck(F.bernoulli_log_prob, gpu(rng.uniform(-4, 4, (3, 4, 5))), gpu(rng.uniform(0, 1, (4, 5))))
    x, mu, logvar = gpu(rng.normal(size=(3, 4, 5))), gpu(rng.normal(size=(4, 5))), gpu(rng.uniform(-1, 1, (4, 5)))
    assert mv.gradcheck(F.gaussian_log_prob, x, mu, logvar)
    assert mv.gradcheck(lambda z: F.gaussian_log_prob(z, 0.0, 0.0), x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(37, 784), (3, 37, 784), (5, 9001)])
def test_bernoulli_gaussian_and_dense_kernels_match_numpy(dtype, shape):
    """bernoulli.cu and gaussian.cu against the float64 reference (their sums, bit for bit, the
    device's own terms in the documented order), and dense.cu's bias, ReLU and ReLU gradient bit
    for bit NumPy's."""
    from test_kernels import _bernoulli_inputs, _ref_bernoulli_terms

    tol = TOL[dtype]
    D = shape[-1]
    logits, x = _bernoulli_inputs(shape, dtype, 13)
    x = x[(0,) * (len(shape) - 2)]  # (B, D) images, repeated under the samples' logits
    xs = np.broadcast_to(x, shape)
    d_logits, d_x = cp.asarray(logits), cp.asarray(x)
    terms = host(G.bernoulli_log_prob_forward(d_logits.reshape(-1, 1), cp.asarray(xs).reshape(-1, 1)))
    ulp_l = 4 * np.finfo(dtype).eps * (np.abs(logits.astype(np.float64)) + 1)
    want = _ref_bernoulli_terms(logits, xs)
    assert np.all(np.abs(terms - want.reshape(-1)) <= tol["rtol"] * np.abs(want.reshape(-1)) + ulp_l.reshape(-1))
    lanes = 1
    while lanes < 32 and 8 * lanes < min(D, TILE):
        lanes *= 2
    rows = logits.size // D
    ordered = np.array([_documented_row_sum(terms[r * D:(r + 1) * D], lanes, r * D, TILE) for r in range(rows)],
                       dtype)
    np.testing.assert_array_equal(host(G.bernoulli_log_prob_forward(d_logits, d_x)).reshape(-1), ordered)
    g = inputs(shape[:-1], dtype, 14)[0]
    d = host(G.bernoulli_log_prob_backward(cp.asarray(g), d_logits, d_x))
    l64 = logits.astype(np.float64)
    np.testing.assert_allclose(d, g[..., None] * (xs - 0.5 * (np.tanh(0.5 * l64) + 1)), **tol)

    # the Gaussian log-density of x under a sample's (mu, logvar), repeated under the samples
    mu, lv = inputs(shape[-2:], dtype, 17)
    xg = inputs(shape, dtype, 18)[0]
    terms = host(G.gaussian_log_prob_forward(cp.asarray(xg).reshape(-1, 1),
                                             cp.asarray(np.broadcast_to(mu, shape)).reshape(-1, 1),
                                             cp.asarray(np.broadcast_to(lv, shape)).reshape(-1, 1)))
    ordered = np.array([dtype(-0.5) * _documented_row_sum(-2 * terms[r * D:(r + 1) * D], lanes, r * D, TILE)
                        for r in range(rows)], dtype)  # (-2 times a row of one term is its term, exactly)
    np.testing.assert_array_equal(
        host(G.gaussian_log_prob_forward(cp.asarray(xg), cp.asarray(mu), cp.asarray(lv))).reshape(-1), ordered)
    t = (xg - mu.astype(np.float64)) * np.exp(-0.5 * lv.astype(np.float64))
    np.testing.assert_allclose(host(G.gaussian_log_prob_forward(cp.asarray(xg), cp.asarray(mu), cp.asarray(lv))),
                               -0.5 * (np.log(2 * np.pi) + lv + t * t).sum(-1), rtol=tol["rtol"] * 4 * math.sqrt(D),
                               atol=tol["atol"])

    prod, g = inputs((shape[-2], D), dtype, 15)
    b = inputs((D,), dtype, 16)[0]
    want = np.maximum(prod + b, 0)
    d_prod = cp.asarray(prod)
    fresh = G.bias_act(d_prod, cp.asarray(b), relu=True, out=cp.empty_like(d_prod))  # into a new array
    out = G.bias_act(d_prod, cp.asarray(b), relu=True)  # in place
    assert out is d_prod
    np.testing.assert_array_equal(host(fresh), want)
    np.testing.assert_array_equal(host(out), want)
    np.testing.assert_array_equal(host(G.relu_grad(cp.asarray(g), out)), g * (host(out) > 0))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 4), (5, 100), (50, 3, 7), (5000, 20)])
def test_the_logsumexp_kernels_match_the_float64_reference(dtype, shape):
    """logsumexp.cu on the device: log(sum(exp(x), axis=0)) and its gradient against float64
    NumPy to rounding, a column of -inf giving -inf, columns far from 0 (where exp(x - out)
    would lose the log term to out's rounding: the gradient takes the parts apart), the same
    bits on a second run (a fixed order); and gradcheck of the op's row in float64."""
    import minivae as mv
    import minivae.functional as F
    from minivae.gpu import dispatch

    tol = TOL[dtype]
    x = (10 * inputs(shape, dtype, 23)[0]).astype(dtype)
    x[:, 0] = -np.inf
    x[:, -1] += 1e8 if dtype == np.float32 else 1e17
    out, shift, log_sum = G.logsumexp_forward(cp.asarray(x))
    np.testing.assert_array_equal(host(out), host(G.logsumexp_forward(cp.asarray(x))[0]))
    np.testing.assert_array_equal(host(out), host(shift) + host(log_sum))
    x64 = x.astype(np.float64)
    m = np.max(x64, axis=0)
    m = np.where(np.isfinite(m), m, 0)
    rtol = tol["rtol"] * math.log2(2 * shape[0])  # (the sum's rounding, in the value and the gradient)
    with np.errstate(divide="ignore", invalid="ignore"):  # (log(0) and -inf - -inf of the -inf column)
        log_sum64 = np.log(np.exp(x64 - m).sum(axis=0))
        want = m + log_sum64
        np.testing.assert_allclose(host(out), want, rtol=rtol, atol=tol["atol"])
        g = inputs(shape[1:], dtype, 24)[0]
        d = host(G.logsumexp_backward(cp.asarray(g), cp.asarray(x), shift, log_sum))
        keep = np.isfinite(want)  # (the -inf column's gradient is NaN, as the op's NumPy code gives)
        want_d = g * np.exp((x64 - m) - log_sum64)  # (x64 - want would round away log_sum64 at 1e17)
        np.testing.assert_allclose(d[:, keep], want_d[:, keep], rtol=rtol, atol=tol["atol"])
    t = mv.tensor(np.random.default_rng(25).normal(size=(6, 4)), requires_grad=True).to("gpu")
    assert F.logsumexp(t, axis=0)._node.fn is dispatch.TABLE["LogSumExp"]
    assert mv.gradcheck(lambda a: F.logsumexp(a, axis=0), t)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (100, 10), (3, 7, 10), (20, 5000)])
def test_the_log_softmax_kernels_match_the_float64_reference(dtype, shape):
    """The log-softmax of logsumexp.cu over the last axis on the device: values and gradient
    against float64 NumPy to rounding (the cancelling x - lse of a row's maximum to a few ulp
    of x), the same bits on a second run; and gradcheck of the op's row in float64."""
    import minivae as mv
    import minivae.functional as F
    from minivae.gpu import dispatch

    tol = TOL[dtype]
    x = (10 * inputs(shape, dtype, 26)[0]).astype(dtype)
    out = G.log_softmax_forward(cp.asarray(x))
    np.testing.assert_array_equal(host(out), host(G.log_softmax_forward(cp.asarray(x))))
    x64 = x.astype(np.float64)
    m = x64.max(axis=-1, keepdims=True)
    want = x64 - (m + np.log(np.exp(x64 - m).sum(axis=-1, keepdims=True)))
    bound = tol["rtol"] * math.log2(2 * shape[-1]) * np.abs(want) + 4 * np.finfo(dtype).eps * np.abs(x64) + tol["atol"]
    assert np.all(np.abs(host(out) - want) <= bound)
    g = inputs(shape, dtype, 27)[0]
    d = host(G.log_softmax_backward(cp.asarray(g), out))
    o64 = host(out).astype(np.float64)
    want_d = g - np.exp(o64) * g.astype(np.float64).sum(axis=-1, keepdims=True)
    scale = np.abs(g).astype(np.float64) + np.exp(o64) * np.abs(g.astype(np.float64)).sum(axis=-1, keepdims=True)
    assert np.all(np.abs(d - want_d) <= tol["rtol"] * math.log2(2 * shape[-1]) * scale + tol["atol"])
    t = mv.tensor(np.random.default_rng(28).normal(size=(6, 4)), requires_grad=True).to("gpu")
    assert F.log_softmax(t)._node.fn is dispatch.TABLE["LogSoftmax"]
    assert mv.gradcheck(lambda a: F.log_softmax(a), t)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0, 5), (37, 784), (100, 512), (1000, 50), (3, 10, 7)])
def test_the_bias_gradient_kernel_sums_columns_in_the_documented_order(dtype, shape):
    """dense.cu's bias gradient on the device: the column sums bit for bit in the order of
    kernels/chunks.cuh, alone and behind a ReLU (whose gradient is NumPy's bit for bit)."""
    from test_kernels import _documented_column_sums

    g, y = inputs(shape, dtype, 21)
    y = np.maximum(y, 0)
    rows = (-1, shape[-1])
    d, db = G.bias_grad(cp.asarray(g))
    np.testing.assert_array_equal(host(db), _documented_column_sums(g.reshape(rows)))
    d, db = G.bias_grad(cp.asarray(g), cp.asarray(y))
    np.testing.assert_array_equal(host(d), g * (y > 0))
    np.testing.assert_array_equal(host(db), _documented_column_sums((g * (y > 0)).reshape(rows)))


def test_dense_rows_captured_in_a_cuda_graph_give_the_eager_bits():
    """A LinearRelu + Linear forward and backward captured once in a CUDA graph (relaxed mode, on
    a non-blocking stream) and replayed twice, for two batches written into the input buffer:
    the output and every gradient are the eager run's bits on the same inputs (the rows run the
    same cuBLAS calls in both modes)."""
    import minivae as mv
    import minivae.functional as F
    from minivae.gpu import dispatch

    rng = np.random.default_rng(10)
    batches = [rng.standard_normal((100, 784)).astype(np.float32) for _ in range(2)]
    W1, b1, W2, b2 = (mv.Tensor(cp.asarray(a.astype(np.float32)), requires_grad=True) for a in (
        rng.standard_normal((784, 512)) / 28, rng.standard_normal(512) / 10,
        rng.standard_normal((512, 256)) / 22, rng.standard_normal(256) / 10))
    u = cp.asarray(rng.standard_normal((100, 256)).astype(np.float32))  # the upstream gradient
    x = mv.Tensor(cp.empty((100, 784), np.float32), requires_grad=True)  # the graph's input buffer
    leaves = [x, W1, b1, W2, b2]

    def step():
        for t in leaves:
            t.grad = None  # fresh gradient arrays: the graph writes into those it allocated
        h = F.linear_relu(x, W1, b1)
        y = F.linear(h, W2, b2)
        assert h._node.fn is dispatch.TABLE["LinearRelu"] and y._node.fn is dispatch.TABLE["Linear"]
        (y * u).sum().backward()
        return [y.data] + [t.grad for t in leaves]

    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        eager = []
        for batch in batches:  # also compiles every CuPy kernel and makes the cuBLAS handle
            x.data.set(batch)
            eager.append([host(a) for a in step()])
        assert not np.array_equal(eager[0][0], eager[1][0])
        x.data.set(batches[0])
        stream.synchronize()
        stream.begin_capture(mode=cp.cuda.runtime.streamCaptureModeRelaxed)
        try:
            outputs = step()  # the graph's output arrays, kept alive here
        finally:
            graph = stream.end_capture()
        for want, batch in zip(eager, batches):
            x.data.set(batch)
            for a in outputs:
                a.fill(np.nan)  # what the replay does not write stays NaN
            graph.launch(stream)
            stream.synchronize()
            for i, (got, w) in enumerate(zip(outputs, want)):
                np.testing.assert_array_equal(host(got), w, err_msg=f"output {i}")


# ------------------------------------------------------------------------------ graph mode
@pytest.mark.parametrize("model, extra, n_train", GRAPH_CASES)
def test_graph_mode_replays_give_the_bits_of_eager_steps(tmp_path, model, extra, n_train):
    """N steps replayed from one captured CUDA graph end with the parameters, Adam moments and
    noise offset of N eager steps on the same GPU, bit for bit: 3 epochs of batches of 80 (with
    300 images a last batch of 60, which runs eagerly), KL warm-up, cosine learning rate, the
    moments' flush at step 10, a capture per epoch. (tests/test_graph_mode.py: the same on the CPU
    with a stand-in for the capture.) Every registered model, each step captured: the
    Gumbel-softmax VAE's too, whose noise the Gumbel kernel draws on the device."""
    eager_and_graph_runs(tmp_path, model, extra, n_train)


def test_engine_ops_with_numbers_are_captured_and_replayed():
    """Forward and backward of engine ops that take Python numbers (0.5 * h, h - 1.0, exp, sum),
    a fused reparameterization + KL reading its offset from memory, and the cuBLAS rows, captured
    by CapturedStep and replayed on new inputs: the eager bits, and new noise when the counter
    moves. (Graph mode's building block, apart from the trainer.)"""
    import minivae as mv
    import minivae.functional as F
    from minivae.gpu.graph import CapturedStep
    from minivae.random import Noise

    rng = np.random.default_rng(9)
    x = cp.asarray(rng.standard_normal((64, 30)).astype(np.float32))
    W = mv.Tensor(cp.asarray((rng.standard_normal((30, 8)) / 6).astype(np.float32)), requires_grad=True)
    b = mv.Tensor(cp.zeros(8, np.float32), requires_grad=True)
    counter = cp.zeros(1, cp.uint64)
    out = {}

    def step():
        h = F.linear_relu(mv.tensor(x), W, b)
        z, kl = F.reparameterize_kl(0.5 * h, h - 1.0, Noise(3, 0, 1, offset_from=counter))
        loss = (F.exp(-z) + kl.reshape(-1, 1)).sum()
        W.grad = b.grad = None
        loss.backward()
        out.update(loss=loss.data, gW=W.grad, gb=b.grad)

    def eager_bits():
        step()
        return [host(out[k]).copy() for k in ("loss", "gW", "gb")]

    step()  # eagerly first, as the trainer does: the cuBLAS handle and its workspace, and the
    # kernels, are made before the capture (Gemm's contract), whichever tests ran before this one
    graph = CapturedStep(step)
    captured = [out["loss"], out["gW"], out["gb"]]  # the arrays the graph writes at each replay
    for trial in range(3):
        x[...] = cp.asarray(rng.standard_normal((64, 30)).astype(np.float32))
        counter[...] = trial
        graph.replay()
        cp.cuda.get_current_stream().synchronize()
        replayed = [host(a).copy() for a in captured]
        for got, want in zip(replayed, eager_bits()):  # the eager step makes arrays of its own
            np.testing.assert_array_equal(got, want)
    counter[...] = 7  # the same inputs, another offset: other noise, another loss
    graph.replay()
    cp.cuda.get_current_stream().synchronize()
    assert host(captured[0]) != replayed[0]
