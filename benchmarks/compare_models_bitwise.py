#!/usr/bin/env python3
"""Compare every model's loss, gradients and log-weights bit for bit against another commit.

For each model of the registry (``minivae.models.MODELS``) and a few settings of the VAE family
(beta, several Monte Carlo samples, the IWAE bound), this builds a small float64 model on the CPU
with fixed seeds, and records:

* the training loss (with a labelled batch for the semi-supervised models), at the model's own
  KL weight and at beta = 0.7 (the warm-up path);
* every trainable parameter's gradient of that loss;
* the importance log-weights ``log_weights(x, k=3, noise)`` (no gradient).

It does this twice, in two subprocesses: once with the working tree's ``minivae`` and once with
the reference commit's, exported by ``git archive`` into a temporary folder, and exchanges the
numbers through ``.npz`` files. Then it prints, per model, whether each array is the same bits
and, where it is not, the largest difference relative to the array's largest magnitude.

    python benchmarks/compare_models_bitwise.py                # against 02cd412
    python benchmarks/compare_models_bitwise.py --ref HEAD~3   # any commit

Exit status 0 when everything is the same bits, 1 otherwise.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REF = "02cd412"

#: Small sizes that build every model quickly (the ladder models need two stochastic layers;
#: M1+M2 gets a fresh small M1 from a dict of VAE settings).
SMALL = dict(x_dim=12, z_dim=3, hidden=(8,))
SIZES = {"ladder": dict(hidden=(8, 6), z_dims=(3, 2)), "ladder-m2": dict(hidden=(8, 6), z_dims=(3, 2)),
         "m1m2": dict(m1=dict(x_dim=12, z_dim=4, hidden=(8,)))}
#: Extra settings of the VAE family (name -> (registry name, keyword arguments)).
VARIANTS = {"vae-beta4": ("vae", dict(beta=4.0)), "vae-mc3": ("vae", dict(mc_samples=3)),
            "iwae-2layer": ("iwae", dict(layers=2, k=4)), "iwae-k1": ("iwae", dict(k=1)),
            "flow-mc2": ("flow", dict(mc_samples=2))}
BATCH = 6


def _cases():
    from minivae.models import MODELS

    cases = {name: (name, {}) for name in sorted(MODELS)}
    cases.update(VARIANTS)
    return cases


def _record(out_path):
    """Run every case with the ``minivae`` on ``sys.path`` and save the arrays to ``out_path``."""
    import minivae as mv
    from minivae.models import build_model
    from minivae.random import Generator

    out = {}
    for case, (name, extra) in _cases().items():
        for beta in (None, 0.7):
            rng = np.random.default_rng(0)
            kwargs = dict(SMALL, **SIZES.get(name, {}))
            kwargs.update(extra)
            try:
                model = build_model(name, rng=rng, **kwargs).astype(np.float64)
            except TypeError as exc:  # a setting this tree's model does not take
                print(f"{case}: skipped ({exc})", file=sys.stderr)
                break
            data = np.random.default_rng(1)
            x = (data.uniform(size=(BATCH, model.x_dim)) < 0.5).astype(np.float64)
            labels = np.arange(BATCH) % 10
            call = {}
            if getattr(model, "semi_supervised", False):
                model.set_data_sizes(60, 4)
                call["labelled"] = (mv.tensor(x[:4]), labels[:4])
            tag = f"{case}|beta={beta}"
            loss, _ = model.loss(mv.tensor(x), Generator(seed=5), beta=beta, **call)
            loss.backward()
            out[f"{tag}|loss"] = np.asarray(loss.data)
            for pname, p in model.named_parameters():
                if p.requires_grad and p.grad is not None:
                    out[f"{tag}|grad|{pname}"] = np.asarray(p.grad)
            if beta is None:
                with mv.no_grad():
                    lw = model.log_weights(mv.tensor(x), 3, Generator(seed=6))
                out[f"{case}|log_weights"] = np.asarray(lw.data)
    np.savez(out_path, **out)


def _run_tree(tree, out_path):
    env = dict(os.environ, PYTHONPATH=str(tree), MINIVAE_KERNELS_DIR=str(Path(tree) / "kernels"))
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--record", str(out_path)],
                   env=env, check=True, cwd=str(tree))


def _export(ref, dest):
    """The files of commit ``ref`` under ``dest`` (``git archive``, no checkout touched)."""
    archive = Path(dest) / "ref.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(archive), ref], check=True)
    tree = Path(dest) / "tree"
    tree.mkdir()
    with tarfile.open(archive) as tar:
        tar.extractall(tree)
    return tree


def _compare(ref_arrays, new_arrays):
    """Print one line per array that differs or is missing; return the number of such arrays."""
    bad = 0
    for key in sorted(set(ref_arrays) | set(new_arrays)):
        if key not in new_arrays or key not in ref_arrays:
            print(f"  {key}: only in the {'reference' if key in ref_arrays else 'working tree'}")
            bad += 1
            continue
        a, b = ref_arrays[key], new_arrays[key]
        if a.shape != b.shape or a.dtype != b.dtype:
            print(f"  {key}: {a.shape} {a.dtype} against {b.shape} {b.dtype}")
            bad += 1
        elif a.tobytes() != b.tobytes():
            scale = float(np.max(np.abs(a))) or 1.0
            print(f"  {key}: differs, max |diff| = {float(np.max(np.abs(a - b))):.3e} "
                  f"({float(np.max(np.abs(a - b))) / scale:.3e} of max |ref|)")
            bad += 1
    return bad


def main(argv=None):
    """Command line: record (``--record``) or compare the working tree against ``--ref``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ref", default=DEFAULT_REF, help=f"reference commit (default {DEFAULT_REF})")
    parser.add_argument("--record", metavar="NPZ", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.record:
        _record(args.record)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        ref_tree = _export(args.ref, tmp)
        _run_tree(ref_tree, Path(tmp) / "ref.npz")
        _run_tree(ROOT, Path(tmp) / "new.npz")
        with np.load(Path(tmp) / "ref.npz") as r, np.load(Path(tmp) / "new.npz") as n:
            ref_arrays, new_arrays = dict(r), dict(n)
    cases = sorted({k.split("|")[0] for k in ref_arrays} | {k.split("|")[0] for k in new_arrays})
    total = 0
    for case in cases:
        ref_c = {k: v for k, v in ref_arrays.items() if k.split("|")[0] == case}
        new_c = {k: v for k, v in new_arrays.items() if k.split("|")[0] == case}
        print(f"{case}: {len(new_c)} arrays")
        bad = _compare(ref_c, new_c)
        print(f"  {'same bits' if not bad else f'{bad} arrays differ'}")
        total += bad
    print(f"{'all the same bits' if not total else f'{total} arrays differ'} "
          f"({len(new_arrays)} arrays, reference {args.ref})")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
