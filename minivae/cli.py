"""The command line: ``minivae train | eval | sample | plot | gradcheck | graph`` (also ``python -m minivae``)."""
import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from . import streams
from .backend import DeviceError, resolve_device
from .runs import TrainConfig, eval_results_path, load_run, write_json


def _add_train_args(p):
    d = TrainConfig()
    p.add_argument("--model", default=d.model, help="model family (default %(default)s)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="passes over the 50k training images")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate (peak of the schedule)")
    p.add_argument("--lr-schedule", choices=("cosine", "constant"), default=d.lr_schedule)
    p.add_argument("--lr-min", type=float, default=d.lr_min, help="final rate of the cosine schedule")
    p.add_argument("--z-dim", type=int, default=d.z_dim)
    p.add_argument("--hidden", type=int, nargs="+", default=list(d.hidden),
                   help="encoder hidden sizes; the decoder mirrors them")
    p.add_argument("--activation", default=d.activation)
    p.add_argument("--beta", type=float, default=d.beta, help="KL weight (beta-VAE when > 1)")
    p.add_argument("--warmup", type=int, default=d.warmup, help="epochs of linear KL warm-up")
    p.add_argument("--mc-samples", type=int, default=d.mc_samples, help="Monte Carlo samples of the ELBO")
    p.add_argument("--iw-k", type=int, default=d.iw_k, help="train on the k-sample IWAE bound when > 1")
    p.add_argument("--n-labelled", type=int, default=d.n_labelled,
                   help="labels (balanced over the classes, chosen by --seed from the training set) a "
                        "semi-supervised model (m2, m1m2, adgm-ssl, sdgm-ssl, ladder-m2) learns from")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", default=d.out, help="run folder (checkpoint, metrics, pictures)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="start again in an --out that holds a run (its files are removed)")
    p.add_argument("--device", default=d.device, help="cpu, gpu or auto")
    p.add_argument("--eval-k", type=int, default=d.eval_k,
                   help="importance samples for the final test log-likelihood (0 skips it)")
    p.add_argument("--trace-every", type=int, default=d.trace_every,
                   help="log per-layer gradient norms and update ratios every N steps (0: off)")
    p.add_argument("--set", dest="model_options", action="append", default=[], metavar="KEY=VALUE",
                   help="a model-specific setting (repeatable), e.g. --set flows=8; VALUE is read as JSON "
                        "when it parses, else as a string")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _parse_options(pairs):
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: --set expects KEY=VALUE, got {pair!r}")
        try:
            options[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            options[key.replace("-", "_")] = value
    return options


def _config_from_args(args):
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    values["hidden"] = tuple(values["hidden"])
    values["model_options"] = _parse_options(values["model_options"])
    return TrainConfig(**values)


def cmd_train(args):
    """Train (or resume) a run and print its test results."""
    from .train import TrainingDiverged, train

    try:
        train(_config_from_args(args), resume=args.resume, overwrite=args.overwrite,
              progress=not args.no_progress)
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def cmd_eval(args):
    """Score a trained run on the test set: ELBO, k-sample log-likelihood (and a classifier's error)."""
    from .data import binarize_eval, load_mnist
    from .evaluate import test_set_scores

    _, model = load_run(args.run)
    model.to(resolve_device(args.device))  # the evaluation follows the model's device
    data = load_mnist(verbose=False)
    x_test = binarize_eval(data.x_test, "test")[: args.n]
    result = {"run": str(args.run), **test_set_scores(model, x_test, data.y_test[: args.n], args.k,
                                                      progress=not args.no_progress)}
    print(json.dumps(result))  # before writing: a failed write (RunWriteError) loses nothing
    write_json(eval_results_path(args.run, args.k), result, kept="the result is printed above")
    return 0


def cmd_sample(args):
    """Save a grid of samples from the prior as a PNG."""
    from .random import Generator
    from .viz import save_image_grid

    from .evaluate import evaluating

    _, model = load_run(args.run)
    with evaluating(model):  # BatchNorm layers must use their running statistics
        images = model.sample(args.n, Generator(seed=args.seed, stream=streams.SAMPLE_IMAGES))
    path = Path(args.out or Path(args.run) / "samples.png")
    save_image_grid(np.asarray(images), path)
    print(path)
    return 0


def cmd_plot(args):
    """Draw the run's pictures (samples, reconstructions, latent space, curves) as PNGs."""
    from .viz import plot_run

    for path in plot_run(args.run):
        print(path)
    return 0


def build_parser():
    """The argparse parser of the ``minivae`` command."""
    parser = argparse.ArgumentParser(prog="minivae", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a VAE on MNIST")
    _add_train_args(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("eval", help="test ELBO and importance-sampled log-likelihood of a run")
    p.add_argument("run")
    p.add_argument("--k", type=int, default=5000)
    p.add_argument("--n", type=int, default=10000, help="score the first N test images")
    p.add_argument("--device", default="cpu", help="cpu, gpu or auto (k = 5000 takes seconds on a GPU)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("sample", help="a grid of images sampled from a trained model")
    p.add_argument("run")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out")
    p.set_defaults(func=cmd_sample)
    p = sub.add_parser("plot", help="pictures of a run (PNG files in the run folder)")
    p.add_argument("run")
    p.set_defaults(func=cmd_plot)
    _add_gradient_commands(sub)
    return parser


def main(argv=None):
    """Entry point of the ``minivae`` command."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DeviceError as exc:  # --device gpu without CuPy or a usable GPU: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2


# ----- studying gradients: `minivae gradcheck` and `minivae graph` (see minivae.gradcheck_cases,
# minivae.graph and docs/gradients.md) ---------------------------------------------------------

def _add_gradient_commands(sub):
    """Register the ``gradcheck`` and ``graph`` subcommands on the subparsers ``sub``."""
    p = sub.add_parser("gradcheck", help="finite-difference checks of every op (or a model), as tables")
    p.add_argument("--op", action="append", metavar="NAME",
                   help="check only this op (class or function name, e.g. softplus; repeatable)")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                   help="float64: the exact check; float32: float32 backward vs float64 differences, "
                        "with the error rounding alone would leave")
    p.add_argument("--model", metavar="NAME",
                   help="check a small instance of this model's loss w.r.t. every parameter "
                        "(only the model unless --op is given too)")
    p.set_defaults(func=cmd_gradcheck)
    p = sub.add_parser("graph", help="the computation graph of one loss evaluation, as Graphviz DOT (+ SVG)")
    p.add_argument("run", nargs="?", help="a run folder (its checkpoint's model); or give --model")
    p.add_argument("--model", metavar="NAME", help="a freshly initialized model with the train defaults")
    p.add_argument("--grad", action="store_true", help="label every node with its gradient norm")
    p.add_argument("--out", help="output file: .dot (an .svg is written next to it when Graphviz is "
                                 "installed) or .svg; default RUN/graph.dot, or NAME_graph.dot")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--data", choices=("auto", "mnist", "random"), default="auto",
                   help="the batch: the first test images of a cached MNIST, or random binary "
                        "images (auto: MNIST when cached)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise (and of random data)")
    p.set_defaults(func=cmd_graph)


def cmd_gradcheck(args):
    """Print per-op (and per-model) tables of analytic vs numeric gradient errors; exit 1 on a failure."""
    from .gradcheck_cases import CASES, criteria, find_op, format_table, public_name, report_model, report_op

    try:
        ops = [find_op(name) for name in args.op] if args.op else ([] if args.model else list(CASES))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(criteria(args.dtype))
    failed, total = [], 0
    for op in ops:
        if op not in CASES:
            print(f"error: {op.__name__} has no gradcheck case", file=sys.stderr)
            return 2
        rows = report_op(op, args.dtype)
        total += len(rows)
        failed += [f"{op.__name__} / {case} / input {label}" for case, label, r in rows if not r["passed"]]
        name = public_name(op)
        print("\n" + format_table(f"{op.__name__}" + (f" (F.{name})" if name else "") +
                                  f": {len(CASES[op])} case{'s' if len(CASES[op]) != 1 else ''}, {args.dtype}", rows, args.dtype))
    if args.model:
        try:
            rows = report_model(args.model, args.dtype)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        total += len(rows)
        failed += [f"model {args.model} / {label}" for _, label, r in rows if not r["passed"]]
        print("\n" + format_table(f"model {args.model}: the loss w.r.t. every parameter, {args.dtype}",
                                  rows, args.dtype))
    print(f"\n{total - len(failed)} of {total} checks passed" + (": FAILED " + "; ".join(failed) if failed else ""))
    return 1 if failed else 0


def _graph_batch(args, x_dim):
    """The batch of ``minivae graph``: cached MNIST test images, or seeded random binary images."""
    if args.data != "random":
        from .data import binarize_eval, load_mnist
        from .data.mnist import MNISTUnavailableError

        try:
            x = binarize_eval(load_mnist(sources=("cache",), verbose=False).x_test, "test")
            if x.shape[1] == x_dim:
                return x[: args.batch_size], "MNIST test images"
        except MNISTUnavailableError:
            if args.data == "mnist":
                raise SystemExit("error: no cached MNIST (run `minivae train` once, or use --data random)")
    rng = np.random.default_rng(args.seed)
    return (rng.uniform(size=(args.batch_size, x_dim)) < 0.5).astype(np.float32), "random binary images"


def cmd_graph(args):
    """Write the graph of one loss evaluation as DOT (and SVG when Graphviz is installed)."""
    from .graph import model_loss_graph, render_svg, svg_available
    from .models import build_model
    from .random import Noise

    if (args.run is None) == (args.model is None):
        print("error: give a run folder or --model NAME (one of the two)", file=sys.stderr)
        return 2
    if args.run is not None:
        _, model = load_run(args.run)
        source, default_out = f"run {args.run}", Path(args.run) / "graph.dot"
    else:
        try:
            model = build_model(args.model, **TrainConfig(model=args.model).model_kwargs())
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        source, default_out = f"model {args.model} (initial weights)", Path(f"{args.model}_graph.dot")
    x, what = _graph_batch(args, model.x_dim)
    title = f"{source}: loss on {len(x)} {what}" + (", |grad| = norm of d loss / d node" if args.grad else "")
    _, dot = model_loss_graph(model, x, Noise(seed=args.seed), grad=args.grad, title=title)
    out = Path(args.out) if args.out else default_out
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".svg":
        if not svg_available():
            print("error: SVG needs Graphviz's `dot` program; write a .dot file instead", file=sys.stderr)
            return 2
        out.write_text(render_svg(dot))
        print(out)
        return 0
    out.write_text(dot)
    print(out)
    if svg_available():
        svg = out.with_suffix(".svg")
        svg.write_text(render_svg(dot))
        print(svg)
    return 0
