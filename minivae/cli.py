"""The command line: ``minivae train | eval | sample | plot`` (also ``python -m minivae ...``)."""
import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from .train import CHECKPOINT, TrainConfig


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
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", default=d.out, help="run folder (checkpoint, metrics, pictures)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--device", default=d.device, help="cpu, gpu or auto")
    p.add_argument("--eval-k", type=int, default=d.eval_k,
                   help="importance samples for the final test log-likelihood (0 skips it)")
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


def _load_run(run):
    """Rebuild the model of a run folder from its checkpoint; return (config, model)."""
    from . import checkpoint
    from .models import build_model

    arrays, meta = checkpoint.load(Path(run) / CHECKPOINT)
    config = TrainConfig.from_dict(meta["config"])
    model = build_model(config.model, **config.model_kwargs())
    model.load_state_dict(checkpoint.split_prefix(arrays, "model/"))
    return config, model


def cmd_train(args):
    """Train (or resume) a run and print its test results."""
    from .train import TrainingDiverged, train

    try:
        train(_config_from_args(args), resume=args.resume, progress=not args.no_progress)
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def cmd_eval(args):
    """Score a trained run on the test set: ELBO and the k-sample log-likelihood."""
    from .data import binarize_eval, load_mnist
    from .evaluate import elbo, log_likelihood

    config, model = _load_run(args.run)
    x_test = binarize_eval(load_mnist(verbose=False).x_test, "test")[: args.n]
    bound, _, _ = elbo(model, x_test)
    ll = log_likelihood(model, x_test, k=args.k, progress=not args.no_progress)
    result = {"run": str(args.run), "n_test": len(x_test), "k": args.k,
              "test_elbo": float(bound.mean()), "test_nll": float(-ll.mean())}
    (Path(args.run) / f"eval_k{args.k}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return 0


def cmd_sample(args):
    """Save a grid of samples from the prior as a PNG."""
    from .random import Generator
    from .viz import save_image_grid

    _, model = _load_run(args.run)
    images = model.sample(args.n, Generator(seed=args.seed, stream=3))
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
    return parser


def main(argv=None):
    """Entry point of the ``minivae`` command."""
    args = build_parser().parse_args(argv)
    return args.func(args)
