"""Train the default MNIST VAE on this machine and report seconds per epoch and the test NLL.

    python benchmarks/bench_mnist.py --epochs 100 [--eval-n 10000] [any ``minivae train`` flag]

Runs ``minivae train`` with its defaults (or the flags given), then scores the test set with the
importance-sampled log-likelihood at k = 5000 (Burda et al. 2015) and writes
``benchmarks/results/mnist_<config>_<machine>.json`` with the key ``test_nll``.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import command_line, default_machine_name, versions, write_result  # noqa: E402

from minivae.cli import USER_ERRORS, _add_train_args, check_train  # noqa: E402
from minivae.data import binarize_eval, load_mnist  # noqa: E402
from minivae.evaluate import log_likelihood_and_ess, nll_summary  # noqa: E402
from minivae.train import Trainer  # noqa: E402


def main(argv=None):
    """Train, evaluate, and write the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _add_train_args(parser)
    parser.add_argument("--nll-k", type=int, default=5000, help="importance samples for the test NLL")
    parser.add_argument("--eval-n", type=int, default=10000, help="score the first N test images")
    parser.add_argument("--name", help="result file name (default from the config and machine)")
    parser.add_argument("--trained-with", help="with --resume of a finished run: the command that trained it")
    args = parser.parse_args(argv)
    try:  # the config and checks of `minivae train`, one line for a mistake as there
        config = check_train(args)
    except USER_ERRORS as exc:
        parser.error(str(exc))
    config.eval_k = 0  # scored below, with --nll-k, and timed apart from training

    data = load_mnist(verbose=False)
    trainer = Trainer(config, data=data, progress=not args.no_progress)
    start = time.perf_counter()
    trainer.fit(resume=args.resume, overwrite=args.overwrite)
    train_seconds = time.perf_counter() - start
    metrics = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    final = trainer.final_evaluation()

    x_test = binarize_eval(data.x_test, "test")[: args.eval_n]
    start = time.perf_counter()
    ll, ess = log_likelihood_and_ess(trainer.model, x_test, k=args.nll_k, progress=not args.no_progress)
    eval_seconds = time.perf_counter() - start
    epoch_seconds = [m["seconds"] for m in metrics]
    command = command_line(__file__, argv)
    payload = {
        "run_command": args.trained_with or command,
        "config": json.loads((trainer.run_dir / "config.json").read_text()),
        "versions": versions(),
        "epochs": len(metrics),
        "train_seconds_this_invocation": round(train_seconds, 1),
        "train_seconds_all_epochs": round(float(np.sum(epoch_seconds)), 1),
        "seconds_per_epoch_median": round(float(np.median(epoch_seconds)), 2),
        "test_elbo": final["test_elbo"],
        **nll_summary(ll, ess),
        "nll_k": args.nll_k,
        "nll_n_test": len(x_test),
        "nll_eval_seconds": round(eval_seconds, 1),
        "final_valid_elbo": metrics[-1]["valid_elbo"],
    }
    name = args.name or f"mnist_{Path(config.out).name}_{default_machine_name()}"
    print(json.dumps(payload, indent=2))
    print(write_result(name, payload, command=command))


if __name__ == "__main__":
    main()
