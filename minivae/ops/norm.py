"""Normalization: batch normalization over the batch axis (training mode as one fused op)."""
from ..autograd import Tensor
from ..backend import get_array_module, is_array
from ..checks import FRACTION, POSITIVE, check_bool, check_ranges
from ..function import Function
from .elementwise import add, mul, sub

#: The ranges of batch normalization's settings (``checks.check_ranges``), checked by
#: ``batch_norm`` and ``nn.BatchNorm1d``: eps > 0 keeps the division by sqrt(var + eps) finite
#: for a constant channel; a momentum outside [0, 1] would extrapolate the running statistics
#: past the batch's (a negative running variance, say).
SETTING_RANGES = {"eps": POSITIVE, "momentum": FRACTION}


def _reduce_axes(x):
    """Every axis but the channel axis 1: (0,) for (N, C) and (0, 2) for (N, C, L)."""
    return (0,) if x.ndim == 2 else (0, 2)


def _channel_shape(x, n):
    """The shape that broadcasts a per-channel vector of length ``n`` against ``x``."""
    return (n,) if x.ndim == 2 else (n, 1)


def _check_input(x, name):
    if x.ndim not in (2, 3):
        raise ValueError(f"{name}: expects input of shape (N, C) or (N, C, L), got {tuple(x.shape)}")


def _check_channel_vectors(x, **vectors):
    """Each of ``vectors`` (None, an array or a tensor) must have shape (C,), one value per
    channel of ``x``: a wrong length would otherwise fail deep in a reshape, or broadcast."""
    for name, v in vectors.items():
        if v is not None and tuple(v.shape) != (x.shape[1],):
            raise ValueError(f"batch_norm: {name} must have shape ({x.shape[1]},), one value per "
                             f"channel of the input {tuple(x.shape)}, got {tuple(v.shape)}")


class BatchNorm(Function):
    """batch_norm(x, gamma, beta) in training mode, per channel c (axis 1), over the m elements
    of the batch in that channel (axis 0, and axis 2 for (N, C, L) input):

        mu = mean(x),  var = mean((x - mu)^2)  (biased, as in the normalization of Ioffe &
        Szegedy 2015),  r = 1 / sqrt(var + eps),  xhat = (x - mu) r,  y = gamma xhat + beta.

    d/dbeta = sum(g), d/dgamma = sum(g xhat), and, since xhat depends on x through mu and var too,

        d/dx = gamma r (g - mean(g) - xhat mean(g xhat))

    (dxhat = gamma g; d(mu)/dx_i = 1/m and d(var)/dx_i = 2 (x_i - mu) / m give the two mean
    terms; the sums and means are per channel). Saves xhat and r, not x.
    ``gamma`` and ``beta`` may both be omitted (affine=False): then y = xhat.

    When ``running_mean`` / ``running_var`` (arrays) are given they are updated in place, as in
    PyTorch: running = (1 - momentum) running + momentum stat, with the unbiased variance
    var m / (m - 1) for ``running_var``. They are statistics, not inputs: no gradient.
    """

    @staticmethod
    def forward(ctx, x, gamma=None, beta=None, eps=1e-5, running_mean=None, running_var=None,
                momentum=0.1):
        _check_input(x, "batch_norm")
        xp = get_array_module(x)
        axes = _reduce_axes(x)
        m = x.size // x.shape[1]
        if m < 2:
            raise ValueError(f"batch_norm: training mode needs more than one value per channel, "
                             f"got input of shape {tuple(x.shape)}")
        for name, stat in (("running_mean", running_mean), ("running_var", running_var)):
            if stat is not None and (stat.shape != (x.shape[1],) or stat.dtype != x.dtype):
                raise ValueError(f"batch_norm: {name} must have shape ({x.shape[1]},) and dtype "
                                 f"{x.dtype}, got {tuple(stat.shape)} {stat.dtype}")
        _check_channel_vectors(x, weight=gamma, bias=beta)
        c_shape = _channel_shape(x, x.shape[1])
        mean = x.mean(axis=axes, keepdims=True)
        xhat = x - mean
        var = xp.square(xhat).mean(axis=axes)
        r = 1 / xp.sqrt(var + eps)
        xhat *= r.reshape(c_shape)  # xhat is a fresh array: normalize it in place
        if running_mean is not None:
            running_mean *= 1 - momentum
            running_mean += momentum * mean.reshape(-1)
        if running_var is not None:
            running_var *= 1 - momentum
            running_var += (momentum * m / (m - 1)) * var
        ctx.save(xhat, r, gamma)
        ctx.axes, ctx.c_shape = axes, c_shape
        if gamma is None:
            return xhat
        out = xhat * gamma.reshape(c_shape)
        out += beta.reshape(c_shape)  # out is fresh: add the shift in place
        return out

    @staticmethod
    def backward(ctx, g):
        xhat, r, gamma = ctx.saved
        axes, c_shape = ctx.axes, ctx.c_shape
        needs = ctx.needs_input_grad
        m = xhat.size // xhat.shape[1]
        gsum = g.sum(axis=axes)
        gx = g * xhat
        gxsum = gx.sum(axis=axes)
        dx = None
        if needs[0]:
            scale = r if gamma is None else gamma * r
            xp = get_array_module(g)
            xp.multiply(xhat, (gxsum / m).reshape(c_shape), out=gx)  # reuse the g*xhat buffer
            dx = g - (gsum / m).reshape(c_shape)
            dx -= gx
            dx *= scale.reshape(c_shape)
        if len(needs) == 1:
            return dx
        return dx, (gxsum if needs[1] else None), (gsum if needs[2] else None)


def batch_norm(x, weight=None, bias=None, running_mean=None, running_var=None, training=True,
               momentum=0.1, eps=1e-5):
    """Batch normalization of ``x`` (N, C) or (N, C, L) per channel; ``weight``/``bias`` are the
    optional affine gamma and beta of shape (C,), ``running_mean``/``running_var`` None or arrays
    of shape (C,) in ``x``'s dtype (a Tensor is refused: it cannot be updated in place).

    ``training=True``: batch statistics, one fused node (``BatchNorm``), running statistics
    updated in place when given. ``training=False``: the running statistics (constant arrays),
    y = x * s + (beta - running_mean * s) with s = gamma / sqrt(running_var + eps), composed of
    elementwise ops so gradients still reach x, gamma and beta.
    """
    if (weight is None) != (bias is None):
        raise ValueError("batch_norm: give both weight and bias, or neither")
    for name, stat in (("running_mean", running_mean), ("running_var", running_var)):
        # A Tensor would not be updated: ``running_mean *= 0.9`` in the forward, with no in-place
        # operator on Tensor, rebinds a local name to a new Tensor and leaves the caller's as it was.
        if stat is not None and not is_array(stat):
            raise TypeError(f"batch_norm: {name} must be a NumPy or CuPy array (updated in place "
                            f"in training mode), got {type(stat).__name__}")
    check_ranges(batch_norm, SETTING_RANGES, eps=eps, momentum=momentum)
    training = check_bool(training, "batch_norm: training")  # "no" would train, 0.0 evaluate
    eps, momentum = float(eps), float(momentum)  # a NumPy float64 would make float32 statistics float64
    if training:
        params = (x,) if weight is None else (x, weight, bias)
        return BatchNorm.apply(*params, eps=eps, running_mean=running_mean,
                               running_var=running_var, momentum=momentum)
    if running_mean is None or running_var is None:
        raise ValueError("batch_norm: evaluation mode needs running_mean and running_var")
    xd = x.data if isinstance(x, Tensor) else x
    _check_input(xd, "batch_norm")
    _check_channel_vectors(xd, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var)
    xp = get_array_module(running_var)
    # The ops below get fresh arrays, never the buffers themselves: an op may save what it gets,
    # and a saved array stays read-only while its graph lives, but the next training step,
    # load_state_dict and reset_running_stats write into the buffers in place.
    inv = 1 / xp.sqrt(running_var + eps)
    mean_inv = running_mean * inv
    c_shape = _channel_shape(xd, xd.shape[1])
    if weight is None:
        scale, shift = inv, -mean_inv
    else:
        scale = mul(weight, inv)
        shift = sub(bias, mul(weight, mean_inv))  # beta - running_mean * s
    if xd.ndim == 3:
        scale = scale.reshape(c_shape)
        shift = shift.reshape(c_shape)
    return add(mul(x, scale), shift)
