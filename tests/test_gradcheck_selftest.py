"""gradcheck checks itself: deliberately wrong backward passes are caught, correct ones pass."""
import re

import numpy as np
import pytest

import minivae as mv
from minivae import Function, GradcheckError, Tensor
from minivae import functional as F
from minivae.gradcheck import ATOL, FULL_CHECK_MAX, RTOL, check_float32, gradcheck, gradcheck_report


class Square(Function):
    """x^2 with a correct backward."""

    @staticmethod
    def forward(ctx, x):
        ctx.save(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        return g * 2 * ctx.saved[0]


class SquareOff(Square):
    """x^2 whose backward is 1% too large: d/dx = 2.02 x (wrong on purpose)."""

    @staticmethod
    def backward(ctx, g):
        return g * 2.02 * ctx.saved[0]


class MatmulTransposedGrad(Function):
    """a @ b with d/db transposed (for square b the shapes still match, so only values can tell)."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save(a, b)
        return a @ b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        return g @ b.T, (a.T @ g).T


class FlipForgotten(Function):
    """x reversed along axis 0, whose backward forgets to reverse g back: an all-ones upstream
    gradient (or a loss that is a plain sum) cannot see this, a random one can."""

    @staticmethod
    def forward(ctx, x):
        return x[::-1].copy()

    @staticmethod
    def backward(ctx, g):
        return g


class Twice(Function):
    """2x, whose subclasses below each get the backward wrong in one way of their own."""

    @staticmethod
    def forward(ctx, x):
        return 2 * x


class OneElementWrong(Twice):
    """2x, with the gradient of one element (3, 7) dropped: only that element is wrong."""

    @staticmethod
    def backward(ctx, g):
        out = 2 * g
        out[3, 7] = 0.0
        return out


def test_correct_backward_passes(t64):
    assert gradcheck(Square.apply, t64(3, 4))


def test_off_by_one_percent_is_caught_and_named(t64):
    x = t64(3, 4)
    with pytest.raises(GradcheckError, match=r"input 0 \(x\) disagrees at element \(0, 0\): analytic .*numeric"):
        gradcheck(SquareOff.apply, x)


def test_transposed_gradient_is_caught_on_the_right_input(t64):
    a, b = t64(3, 3), t64(3, 3)
    assert gradcheck(lambda a, b: a @ b, a, b)  # the real matmul passes
    with pytest.raises(GradcheckError, match=r"input 1 \(b\) disagrees at element \(\d+, \d+\)"):
        gradcheck(MatmulTransposedGrad.apply, a, b)


def test_forgotten_permutation_hidden_by_ones_caught_by_random_upstream(t64):
    x = t64(4, 3)
    # With an all-ones upstream gradient the wrong backward looks right ...
    FlipForgotten.apply(x).backward(np.ones((4, 3)))
    np.testing.assert_array_equal(x.grad, np.ones((4, 3)))
    # ... gradcheck's random upstream catches it.
    with pytest.raises(GradcheckError, match="input 0"):
        gradcheck(FlipForgotten.apply, x)


def test_random_direction_path_catches_wrong_scale_on_large_input(t64):
    x = t64(20, 20)
    assert x.size > FULL_CHECK_MAX
    assert gradcheck(Square.apply, x)
    with pytest.raises(GradcheckError, match="random direction 0 of"):
        gradcheck(SquareOff.apply, x)


def test_random_direction_path_catches_one_wrong_element(t64):
    """Directions have no vanishing component, so a single wrong element of 400 still shows."""
    x = t64(20, 20)
    with pytest.raises(GradcheckError, match="random direction"):
        gradcheck(OneElementWrong.apply, x)


def test_random_direction_path_catches_transposition_on_large_input(t64):
    a, b = t64(17, 17), t64(17, 17)
    assert gradcheck(lambda a, b: a @ b, a, b)
    with pytest.raises(GradcheckError, match=r"input 1 \(b\) disagrees at random direction"):
        gradcheck(MatmulTransposedGrad.apply, a, b)


class DropsTheSmallestUpstream(Twice):
    """2x, whose backward drops the upstream gradient's element of smallest size: wrong for one
    output element only, the one the check weighs least."""

    @staticmethod
    def backward(ctx, g):
        out = 2 * g
        out.flat[np.argmin(np.abs(g))] = 0.0
        return out


def test_no_upstream_element_is_small_enough_to_hide_an_error(t64):
    """Normal upstream gradients have elements near 0 (about 1e-3 among 1600): an error there is
    scaled down below the tolerance of a random direction. Sizes 0.5 to 1.5 leave none."""
    with pytest.raises(GradcheckError, match="random direction"):
        gradcheck(DropsTheSmallestUpstream.apply, t64(40, 40))


def test_error_reports_analytic_and_numeric_values():
    x = Tensor(np.array([[1.5]]), requires_grad=True)
    with pytest.raises(GradcheckError) as info:
        gradcheck(SquareOff.apply, x)
    message = str(info.value)
    # d/dx x^2 at 1.5 is 3; the wrong backward says 3.03. Both appear (times the upstream u).
    found = re.search(r"analytic (\S+), numeric (\S+) ", message)
    analytic, numeric = float(found[1]), float(found[2])
    assert analytic / numeric == pytest.approx(1.01, rel=1e-6)


def nan_at_one_element(x):
    """x with one element NaN: f, and so every numeric derivative, is NaN."""
    x.data[1] = np.nan
    return x


@pytest.mark.parametrize("fn, make_input", [
    (SquareOff.apply, nan_at_one_element),
    (lambda x: F.log(SquareOff.apply(x) - 5.0), lambda x: x),   # log of negative values: NaN
], ids=["NaN input", "NaN output"])
def test_nan_gradients_never_pass(t64, fn, make_input):
    """NaN fails every comparison: a check written as "fail when the error exceeds the
    tolerance" would pass a wrong backward wherever the values are NaN."""
    with np.errstate(invalid="ignore"):
        with pytest.raises(GradcheckError, match="numeric nan .*not finite"):
            gradcheck(fn, make_input(t64(3)))


class NanInFloat32(Twice):
    """2x, whose float32 backward gives NaN (as an overflow to inf times 0 would)."""

    @staticmethod
    def backward(ctx, g):
        return g * (np.float32(np.nan) if g.dtype == np.float32 else 2.0)


def test_check_float32_does_not_pass_a_nan_gradient(t64):
    with pytest.raises(GradcheckError, match=r"float32 gradient of input 0 \(x\) differs .*: nan vs"):
        check_float32(NanInFloat32.apply, t64(3))


@pytest.mark.parametrize("setting, error, message", [
    (dict(eps=0.0), ValueError, "invalid eps 0.0: it must be > 0 and finite"),
    (dict(eps=-1e-6), ValueError, "invalid eps -1e-06"),
    (dict(eps=float("nan")), ValueError, "invalid eps nan"),
    (dict(eps="1e-6"), TypeError, "eps must be a real number"),
    (dict(atol=float("nan")), ValueError, "invalid atol nan: it must be >= 0 and finite"),
    (dict(atol=float("inf")), ValueError, "invalid atol inf"),
    (dict(rtol=-0.1), ValueError, "invalid rtol -0.1"),
    (dict(n_directions=0), ValueError, "n_directions must be at least 1"),
    (dict(n_directions=2.5), TypeError, "n_directions must be an integer"),
    (dict(full_check_max=-1), ValueError, "full_check_max must be at least 0"),
])
@pytest.mark.parametrize("check", [gradcheck, gradcheck_report])
def test_bad_settings_are_refused(t64, check, setting, error, message):
    """NaN tolerances or no random direction would pass any backward (SquareOff is 1% off)."""
    with pytest.raises(error, match=re.escape(message)):
        check(SquareOff.apply, t64(20, 20), **setting)


@pytest.mark.parametrize("setting", [dict(atol=float("nan")), dict(rtol=-1.0)])
def test_check_float32_refuses_bad_tolerances(t64, setting):
    with pytest.raises(ValueError, match="check_float32: invalid"):
        check_float32(Square.apply, t64(3), **setting)


def test_tolerances_are_named_constants():
    assert 0 < ATOL < 1e-3 and 0 < RTOL < 1e-2


class ShiftedGradient(Function):
    """c x, whose backward adds ``error`` to the exact gradient c g. The function is linear, so its
    central differences are c g up to rounding (1e-10), and the error alone decides the check."""

    @staticmethod
    def forward(ctx, x, c=1.0, error=0.0):
        ctx.c, ctx.error = c, error
        return c * x

    @staticmethod
    def backward(ctx, g):
        return ctx.c * g + ctx.error


@pytest.mark.parametrize("c", [1e-3, 1.0], ids=["atol decides", "rtol decides"])
def test_the_tolerance_is_atol_plus_rtol_times_the_numeric_gradient(t64, c):
    """An error of half the tolerance ATOL + RTOL |numeric| passes, one of twice fails: the
    upstream gradients are 0.5 to 1.5 in size, so the numeric gradient |c g| is 0.5 c to 1.5 c.
    At c = 1e-3, gradients of the size a VAE's parameters often have, ATOL is most of it: a
    looser absolute tolerance would let an error of 2e-5 on a gradient of 1e-3 through."""
    x = t64(3, 4)
    assert gradcheck(lambda t: ShiftedGradient.apply(t, c=c, error=0.5 * (ATOL + RTOL * 0.5 * c)), x)
    with pytest.raises(GradcheckError, match=r"input 0 \(t\) disagrees at element \(0, 0\)"):
        gradcheck(lambda t: ShiftedGradient.apply(t, c=c, error=2 * (ATOL + RTOL * 1.5 * c)), x)


def test_inputs_without_grad_and_non_tensors_are_passed_through(t64):
    x, c = t64(3), t64(3, requires_grad=False)
    assert gradcheck(lambda x, c, k: x * c * k, x, c, 2.5)


class MulSwapped(Function):
    """a * b^2, whose backward swaps the two gradients (wrong on purpose). With a and b the same
    tensor only their sum, 3 x^2, can be seen, and that is right."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save(a, b)
        return a * b * b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        return g * 2 * a * b, g * b * b


def same_tensor_twice(x):
    return x, x


def made_by_an_op(x):
    # x * 1 is no leaf: its gradient is not kept, so the analytic one would read as 0
    return x * 1.0, Tensor(x.data.copy(), requires_grad=True)


@pytest.mark.parametrize("make_inputs, message", [
    (same_tensor_twice, r"inputs 0 \(a\) and 1 \(b\) are the same Tensor"),
    (made_by_an_op, r"input 0 \(a\) is the result of recorded ops"),
])
@pytest.mark.parametrize("check", [gradcheck, gradcheck_report, check_float32])
def test_inputs_whose_own_gradient_cannot_be_checked_are_refused(t64, check, make_inputs, message):
    with pytest.raises(ValueError, match=message):
        check(MulSwapped.apply, *make_inputs(t64(3)))


def zeroes_then_squares(x):
    """x^2 (with SquareOff's wrong backward) of an input it first overwrites with zeros: every
    perturbation is wiped out, so numeric and analytic gradients are both 0."""
    x.data[...] = 0.0
    return SquareOff.apply(x)


@pytest.mark.parametrize("check", [gradcheck, gradcheck_report, check_float32])
def test_a_fn_that_changes_its_input_in_place_is_refused(t64, check):
    with pytest.raises(ValueError, match=r"fn changed input 0 \(x\) in place"):
        check(zeroes_then_squares, t64(3))


@pytest.mark.parametrize("result, named", [
    (1.0, "float"), ([0], "list"), (None, "NoneType"), ((), "an empty tuple"),
    (np.zeros(3), "ndarray"), ((Tensor(np.zeros(3)), None), "Tensor, NoneType"),
])
def test_a_result_that_is_no_tensor_is_named(t64, result, named):
    with pytest.raises(TypeError, match=re.escape(f"fn must return a Tensor or a tuple of Tensors, got {named}")):
        gradcheck(lambda x: result, t64(3))


def test_gradcheck_refuses_float32_inputs():
    x = Tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    with pytest.raises(TypeError, match="float64"):
        gradcheck(Square.apply, x)


def test_check_float32_refuses_float32_inputs_by_name():
    # Before: "backward(): grad is float64, tensor is float32", from deep inside the engine.
    x = Tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    with pytest.raises(TypeError, match=r"^check_float32: input 0 \(x\) is float32; give float64 "
                                        r"inputs: they are the reference, and the float32 copies "
                                        r"are made from them$"):
        check_float32(Square.apply, x)


def test_gradcheck_needs_an_input_with_grad(t64):
    with pytest.raises(GradcheckError, match="requires_grad"):
        gradcheck(Square.apply, t64(3, requires_grad=False))


class Upcast(Function):
    """A forward that silently computes in float64 (its backward hands back the input's dtype)."""

    @staticmethod
    def forward(ctx, x):
        ctx.dtype = x.dtype
        return x.astype(np.float64) * 2

    @staticmethod
    def backward(ctx, g):
        return (2 * g).astype(ctx.dtype)


class HalfPrecisionBackward(Function):
    """exp with a backward computed in float16: right in float64, far off in float32."""

    @staticmethod
    def forward(ctx, x):
        out = np.exp(x)
        ctx.save(out)
        return out

    @staticmethod
    def backward(ctx, g):
        out = ctx.saved[0]
        if out.dtype == np.float32:
            return (g.astype(np.float16) * out.astype(np.float16)).astype(np.float32)
        return g * out


def test_check_float32_catches_silent_upcast(t64):
    with pytest.raises(GradcheckError, match="silent upcast"):
        check_float32(Upcast.apply, t64(3, 4))


def test_check_float32_catches_imprecise_float32_backward(t64):
    x = t64(3, 4)
    assert gradcheck(HalfPrecisionBackward.apply, x)
    with pytest.raises(GradcheckError, match="float32 gradient of input 0"):
        check_float32(HalfPrecisionBackward.apply, x)


def test_check_float32_passes_a_correct_op(t64):
    assert check_float32(Square.apply, t64(3, 4))


class SumAndProduct(Function):
    """Two outputs, (a + b, a * b): d(a+b)/da = d(a+b)/db = 1, d(ab)/da = b, d(ab)/db = a
    (an upstream gradient of None counts as 0)."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save(a, b)
        return a + b, a * b

    @staticmethod
    def backward(ctx, g_sum, g_prod):
        a, b = ctx.saved
        g_sum = 0.0 if g_sum is None else g_sum
        g_prod = 0.0 if g_prod is None else g_prod
        return g_sum + g_prod * b, g_sum + g_prod * a


class SumAndProductSwapped(SumAndProduct):
    """The same outputs, whose backward mixes up the two upstream gradients (wrong on purpose)."""

    @staticmethod
    def backward(ctx, g_sum, g_prod):
        return SumAndProduct.backward(ctx, g_prod, g_sum)


def test_two_output_op_passes(t64):
    assert gradcheck(SumAndProduct.apply, t64(3, 2), t64(3, 2))
    assert check_float32(SumAndProduct.apply, t64(3, 2), t64(3, 2))


def test_swapped_output_gradients_are_caught(t64):
    # With one upstream gradient for both outputs (or all ones) the swap would cancel out.
    with pytest.raises(GradcheckError):
        gradcheck(SumAndProductSwapped.apply, t64(3, 2), t64(3, 2))


def test_each_output_gets_its_own_random_upstream_gradient(t64, monkeypatch):
    seen = []
    original = SumAndProduct.backward

    def spy(ctx, g_sum, g_prod):
        seen.append((g_sum.copy(), g_prod.copy()))
        return original(ctx, g_sum, g_prod)

    monkeypatch.setattr(SumAndProduct, "backward", staticmethod(spy))
    gradcheck(SumAndProduct.apply, t64(2, 2), t64(2, 2))
    (g_sum, g_prod), = seen
    assert not np.array_equal(g_sum, g_prod)
    assert len(np.unique(g_sum)) == g_sum.size and len(np.unique(g_prod)) == g_prod.size
    assert (np.abs(g_sum) >= 0.5).all() and (np.abs(g_prod) >= 0.5).all()


def test_an_unused_output_is_checked_as_constant(t64):
    # Only the product is returned: the sum's upstream gradient is None inside backward.
    assert gradcheck(lambda a, b: SumAndProduct.apply(a, b)[1], t64(3), t64(3))


def test_inputs_are_named_by_the_forward_arguments():
    import minivae.functional as F
    from minivae.gradcheck import input_names
    from minivae.ops.vae import Reparameterize

    assert input_names(F.linear, 3) == ["x", "W", "b"]
    assert input_names(MatmulTransposedGrad.apply, 2) == ["a", "b"]
    assert input_names(lambda mu, logvar: mu, 2) == ["mu", "logvar"]
    assert input_names(lambda *xs: xs[0], 2) == ["xs[0]", "xs[1]"]
    assert input_names(max, 2) == ["#0", "#1"]  # a builtin without a readable signature
    assert input_names(Reparameterize.apply, 2)[:2] == ["mu", "logvar"]


def test_failure_shows_the_name_and_both_values(t64):
    with pytest.raises(GradcheckError) as err:
        gradcheck(lambda mu, logvar: SquareOff.apply(mu) + logvar, t64(2, 2), t64(2, 2))
    message = str(err.value)
    assert "input 0 (mu)" in message
    analytic, numeric = (float(m) for m in re.findall(r"(?:analytic|numeric) ([-+0-9.e]+)", message)[:2])
    assert analytic == pytest.approx(numeric * 1.01, rel=1e-6)


@pytest.mark.parametrize("check", [gradcheck, check_float32, lambda fn, x: gradcheck_report(fn, x)])
def test_a_check_inside_no_grad_still_checks(check):
    """Called in a no_grad block, fn recorded nothing: every check failed with "fn must return
    Tensors ... requires_grad=True", as if fn had no input to differentiate."""
    x = Tensor(np.linspace(-1.0, 1.0, 6), requires_grad=True)
    with mv.no_grad():
        check(lambda x: F.tanh(x) * 2.0, x)
    with mv.no_grad(), pytest.raises(GradcheckError, match="disagrees"):
        gradcheck(SquareOff.apply, x)


@pytest.mark.parametrize("check", [gradcheck, check_float32, lambda fn, x: gradcheck_report(fn, x)])
def test_a_check_leaves_the_callers_gradients_as_they_were(check):
    """A check used to clear the inputs' .grad and leave its own gradient there, so checking a
    model's parameter in the middle of a step replaced the gradient about to be applied."""
    x = Tensor(np.linspace(-1.0, 1.0, 6), requires_grad=True)
    mine = np.full(6, 7.0)
    x.grad = mine
    check(lambda x: F.tanh(x) * 2.0, x)
    assert x.grad is mine and np.all(mine == 7.0)
    x.grad = None
    with pytest.raises(GradcheckError, match="disagrees"):
        gradcheck(SquareOff.apply, x)
    assert x.grad is None


def test_a_model_case_is_a_function_of_the_parameters_it_is_given():
    """``model_case``'s loss reads the parameters passed to it, not the model's own: a changed
    copy changes the loss, every copy receives a gradient, and the model is left as it was (a
    loss that ignored them would pass every check, both gradients being 0). The VAE has no
    batch normalization, which would make a bias before it have no effect."""
    from minivae.gradcheck_cases import model_case

    names, fn, (x, *params) = model_case("vae")
    before = fn(x, *params).item()
    for k, name in enumerate(names):
        changed = list(params)
        changed[k] = Tensor(params[k].data + 0.25, requires_grad=True)
        assert fn(x, *changed).item() != before, f"the loss does not read {name}"
    assert fn(x, *params).item() == before
    fn(x, *params).backward()
    for name, p in zip(names, params):
        assert p.grad is not None and np.any(p.grad != 0), f"no gradient reaches {name}"


def test_a_model_case_scores_a_batch_of_binary_images_of_the_size_asked():
    from minivae.gradcheck_cases import SMALL_MODEL, model_case

    _, _, (x, *_) = model_case("vae", batch=3)
    assert x.shape == (3, SMALL_MODEL["x_dim"]) and not x.requires_grad
    assert set(np.unique(x.data)) == {0.0, 1.0}
