"""``gradcheck_report`` (measuring, not asserting) and the ``minivae gradcheck`` tables."""
import numpy as np
import pytest

import minivae as mv
from minivae import GradcheckError
from minivae import functional as F
from minivae import gradcheck_cases
from minivae.cli import main
from minivae.gradcheck import (FLOAT32_ATOL, FLOAT32_RTOL, FULL_CHECK_MAX, N_DIRECTIONS, gradcheck,
                               gradcheck_report)
from minivae.gradcheck_cases import U, case, find_op, public_name
from test_gradcheck_selftest import SquareOff  # a backward 1% off, shared with the self-test


def table_rows(text):
    """The data rows of the printed tables (lines of two-space-indented cells after a header)."""
    return [line for line in text.splitlines()
            if line.startswith("  ") and not line.lstrip().startswith("case ")]


def test_report_measures_what_gradcheck_asserts():
    rng = np.random.default_rng(0)
    W = mv.tensor(rng.standard_normal((3, 4)), requires_grad=True)
    big = mv.tensor(rng.standard_normal((20, 20)), requires_grad=True)   # > FULL_CHECK_MAX elements
    x = mv.tensor(rng.standard_normal((5, 3)))
    fn = lambda W, big, x: F.tanh(x @ W) @ big[:4]                      # noqa: E731
    records = gradcheck_report(fn, W, big, x)
    assert [(r["input"], r["mode"], r["checked"]) for r in records] == [
        (0, "elements", 12), (1, "directions", N_DIRECTIONS)]
    assert big.size > FULL_CHECK_MAX
    assert all(r["passed"] and r["max_abs_err"] < 1e-8 and r["rounding"] is None for r in records)
    assert gradcheck(fn, W, big, x)
    before = W.data.copy(), big.data.copy()
    gradcheck_report(fn, W, big, x, dtype="float32")
    np.testing.assert_array_equal(W.data, before[0])          # every perturbed input is restored
    np.testing.assert_array_equal(big.data, before[1])


def test_report_shows_a_wrong_backward_where_gradcheck_raises():
    x = mv.tensor(np.array([[0.5, -1.0], [2.0, 1.5]]), requires_grad=True)
    (record,) = gradcheck_report(SquareOff.apply, x)
    assert not record["passed"]
    assert record["max_rel_err"] == pytest.approx(0.01, rel=1e-3)      # 2.02 x vs 2 x
    assert record["worst"].startswith("element ")
    assert record["analytic"] == pytest.approx(1.01 * record["numeric"], rel=1e-6)
    with pytest.raises(GradcheckError):
        gradcheck(SquareOff.apply, x)


def test_report_float32():
    x = mv.tensor(np.random.default_rng(1).uniform(-2, 2, (3, 4)), requires_grad=True)
    (record,) = gradcheck_report(F.softplus, x, dtype="float32")
    assert record["passed"]
    scale = record["rounding"] / 2.0 ** -24                  # the largest |numeric gradient|
    assert record["tolerance"] == pytest.approx(FLOAT32_ATOL + FLOAT32_RTOL * scale)
    assert record["max_abs_err"] < 8 * record["rounding"]    # a few float32 roundings at most
    assert x.dtype == np.float64                             # the caller's tensor is untouched
    with pytest.raises(TypeError, match="float64"):
        gradcheck_report(F.softplus, mv.tensor(np.ones(3, np.float32), requires_grad=True))
    with pytest.raises(ValueError):
        gradcheck_report(F.softplus, x, dtype="float16")


def test_op_names():
    assert find_op("logsumexp").__name__ == "LogSumExp"
    assert find_op("LogSumExp") is find_op("logsumexp")
    assert find_op("kl_normal_std").__name__ == "KLNormalStd"
    assert public_name(find_op("binary_cross_entropy_with_logits")) == "binary_cross_entropy_with_logits"
    with pytest.raises(ValueError, match="unknown op 'nope'"):
        find_op("nope")


def test_cli_one_op(capsys):
    assert main(["gradcheck", "--op", "softplus", "--op", "Linear"]) == 0
    out = capsys.readouterr().out
    assert "Softplus (F.softplus): 1 case, float64" in out
    assert "Linear (F.linear): 5 cases, float64" in out
    rows = table_rows(out)
    assert len(rows) == 1 + 12                              # softplus: 1 input; linear: 12 inputs
    assert all(row.endswith("pass") for row in rows)
    assert "pass: |a - n| <= 1e-05 + 0.001 |n|" in out
    assert out.rstrip().endswith("13 of 13 checks passed")


def test_cli_checks_an_op_named_twice_once(capsys):
    assert main(["gradcheck", "--op", "softplus", "--op", "Linear", "--op", "Softplus"]) == 0
    out = capsys.readouterr().out
    assert out.count("Softplus (F.softplus)") == 1
    assert out.index("Softplus (F.softplus)") < out.index("Linear (F.linear)")  # the first order
    assert out.rstrip().endswith("13 of 13 checks passed")


def test_cli_every_op_float32(capsys):
    assert main(["gradcheck", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "rounding" in out.splitlines()[3]                # the header of the first table
    for op in gradcheck_cases.CASES:
        assert f"\n{op.__name__} (F." in out or f"\n{op.__name__}: " in out
    assert all(row.endswith("pass") for row in table_rows(out))


def test_cli_model(capsys):
    assert main(["gradcheck", "--model", "vae"]) == 0
    out = capsys.readouterr().out
    names, _, _ = gradcheck_cases.model_case("vae")
    rows = table_rows(out)
    assert [row.split()[1] for row in rows] == names        # every parameter, in order
    assert "elements" in rows[0] and all(row.endswith("pass") for row in rows)


@pytest.mark.parametrize("model", ["ladder", "m1m2"])
def test_cli_model_float32_with_batch_norm_or_a_frozen_part(model, capsys):
    """A ladder's running statistics and M1+M2's frozen M1 follow the float32 copies of the
    parameters, rather than stopping the check at the ops' refusal to mix float32 and float64."""
    assert main(["gradcheck", "--model", model, "--dtype", "float32"]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert [row.split()[1] for row in rows] == gradcheck_cases.model_case(model)[0]
    assert all(row.endswith("pass") for row in rows)


def test_cli_reports_a_failure(capsys, monkeypatch):
    monkeypatch.setitem(gradcheck_cases.CASES, SquareOff, [case("off by 1%", SquareOff.apply, U(2, 3))])
    assert main(["gradcheck", "--op", "SquareOff"]) == 1
    out = capsys.readouterr().out
    assert "FAIL at element" in out and "0 of 1 checks passed: FAILED SquareOff / off by 1% / input x" in out


def test_cli_errors(capsys):
    assert main(["gradcheck", "--op", "nope"]) == 2
    assert "unknown op 'nope'" in capsys.readouterr().err
    assert main(["gradcheck", "--model", "nope"]) == 2
    assert "invalid choice: 'nope' (choose from 'vae'" in capsys.readouterr().err
