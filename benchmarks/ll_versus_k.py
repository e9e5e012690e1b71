"""How a run's importance-sampled test log-likelihood moves with the number of samples k.

    python benchmarks/ll_versus_k.py RUN [--n 100] [--k 500 5000 50000] [--seeds 1 | --seeds 4 4 1]

Scores the first ``--n`` test images of a trained run folder at each k, ``--seeds`` times with
independent noise (seed 0 is the noise of ``minivae eval``), always on the same images, so that
the differences between the ks are not hidden by the spread over the images. The k-sample
estimate is a stochastic lower bound on log p(x) that rises with k (Burda et al. 2015): how much
the mean NLL still falls above the papers' k = 5000 shows how far that protocol's number is from
the model's own, and each image's effective sample size (``minivae.evaluate``) shows why.

Writes ``benchmarks/results/ll_versus_k_<run>_<machine>.json`` (or ``--out``), one row per k and
seed with the NLL, its standard error over the images, the effective sample sizes and seconds.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import command_line, default_machine_name, versions, write_result  # noqa: E402

from minivae import streams  # noqa: E402
from minivae.data import binarize_eval, load_mnist  # noqa: E402
from minivae.data.mnist import SPLIT_SIZES  # noqa: E402
from minivae.evaluate import EVAL_SEED, log_likelihood_and_ess, nll_summary  # noqa: E402
from minivae.random import Generator  # noqa: E402
from minivae.runs import CHECKPOINT, CONFIG, load_run  # noqa: E402


def parse_args(argv=None):
    """The command line, checked: a run folder, and a positive count of seeds for each k."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a run folder written by `minivae train`")
    parser.add_argument("--n", type=int, default=100, help="score the first N test images")
    parser.add_argument("--k", type=int, nargs="+", default=[500, 5000, 50000], help="the numbers of samples")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1],
                        help="independent estimates at each k: one count for all, or one per --k")
    parser.add_argument("--name", help="result file name (default from the run folder and machine)")
    parser.add_argument("--out", help="the folder of the result (default benchmarks/results)")
    args = parser.parse_args(argv)
    if not (Path(args.run) / CHECKPOINT).is_file():
        parser.error(f"{args.run} is not a run folder: it has no {CHECKPOINT}")
    if not 1 <= args.n <= SPLIT_SIZES["test"]:
        parser.error(f"--n {args.n}: give 1 to {SPLIT_SIZES['test']} test images")
    for option, values in (("--k", args.k), ("--seeds", args.seeds)):
        if min(values) < 1:
            parser.error(f"{option} {min(values)}: every value must be at least 1")
    repeated = sorted({k for k in args.k if args.k.count(k) > 1})
    if repeated:  # its rows would repeat the same seeds' noise and count twice in its mean
        parser.error(f"--k {repeated[0]} is given more than once: give each k once, and more "
                     "--seeds for more estimates at it")
    if len(args.seeds) == 1:
        args.seeds = args.seeds * len(args.k)
    elif len(args.seeds) != len(args.k):
        parser.error(f"--seeds gives {len(args.seeds)} counts for {len(args.k)} values of --k: "
                     "give one for all or one per k")
    return args


def main(argv=None):
    """Score the images at every k and seed, print each row and write the JSON."""
    args = parse_args(argv)
    _, model = load_run(args.run)
    x_test = binarize_eval(load_mnist(verbose=False).x_test, "test")[: args.n]
    rows = []
    for k, seeds in zip(args.k, args.seeds):
        for seed in range(seeds):
            noise = Generator(seed=EVAL_SEED + seed, stream=streams.EVAL_LOG_LIKELIHOOD)
            start = time.perf_counter()
            ll, ess = log_likelihood_and_ess(model, x_test, k=k, noise=noise)
            rows.append({"k": k, "seed": seed, **nll_summary(ll, ess),
                         "seconds": round(time.perf_counter() - start, 1)})
            print(" ".join(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
                           for key, value in rows[-1].items()), flush=True)
    mean_nll = {k: statistics.fmean(r["test_nll"] for r in rows if r["k"] == k) for k in args.k}
    payload = {"run": str(args.run), "config": json.loads((Path(args.run) / CONFIG).read_text()),
               "versions": versions(), "n_test": len(x_test), "rows": rows,
               "mean_test_nll_by_k": {str(k): v for k, v in mean_nll.items()}}
    name = args.name or f"ll_versus_k_{Path(args.run).name}_{default_machine_name()}"
    print(write_result(name, payload, args.out, command=command_line(__file__, argv)))


if __name__ == "__main__":
    main()
