"""The papers' own settings for rows of the results table, trained in pieces of bounded time.

    python benchmarks/paper_runs.py list
    python benchmarks/paper_runs.py piece NAME --seconds S [--seed N] [--runs DIR] [--out OUT] [--device gpu]

A run of the IWAE paper's schedule is 3,280 epochs: hours on a GPU, where a lent GPU machine
gives minutes. ``piece`` trains the run of the recipe NAME with the seed N (default 0; for a
semi-supervised model the seed also draws the labelled images, and the papers report the mean
and standard deviation over several draws), in the folder DIR/NAME-seedN (default DIR
``runs/paper``), for at most S seconds: a new run when the folder holds none, else a resume of
it. At S seconds it sends the trainer SIGTERM, on which the trainer saves its checkpoint at the
end of the step and exits (exit status 143), so the next piece goes on exactly where this one
stopped, on this machine or on another with the same device kind (the folder is carried there).
Each piece then writes into OUT (default ``paper_runs_out``) two files: ``NAME-seedN.tar``, the
run folder, to unpack into DIR before the next piece (``tar -xf OUT/NAME-seedN.tar -C DIR``),
and the run as ``benchmarks/record_run.py`` records it, finished or not (pieces, seconds by
device, every epoch's metrics, and once finished its test scores). The final evaluation (k = 5000 on the
10,000 test images) runs in the piece that ends the training, and starts again in the next piece
when it is stopped: give that piece the minutes it takes.

The recipes take the papers' architecture and schedule where they state one, and say where
and why they differ; model selection and early stopping use the validation split only.
"""
import argparse
import dataclasses
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import record_run  # noqa: E402

from minivae.runs import CHECKPOINT, holds_run  # noqa: E402

#: The IWAE paper's training (Burda et al. 2015; read in the authors' code, github.com/yburda/iwae,
#: experiments.py and optimizers.py): 3^i epochs at 1e-3 * 10^(-i/7), i = 0..7, batches of 20,
#: Adam with epsilon 1e-4 added to the root of the second moment, 2x200 tanh networks, no KL
#: warm-up.
IWAE_PAPER = ["--hidden", "200", "200", "--activation", "tanh", "--batch-size", "20", "--lr", "1e-3",
              "--lr-schedule", "stages", "--adam-eps", "1e-4", "--warmup", "0", "--epochs", "3280"]
#: What every IWAE-paper recipe adds: the model of the epoch best by the validation ELBO is scored,
#: with the papers' 5000 importance samples.
SCORING = ["--keep-best", "--eval-k", "5000"]
#: The auxiliary deep generative models' training (Maaloe et al. 2016; read in the authors' code,
#: github.com/larsmaaloee/auxiliary-deep-generative-models, run_mnist.py): 100 labelled and 100
#: unlabelled images a step, 2x500 ReLU networks, a and z of 100 units, alpha = 0.1 N / N_l (our
#: default), Adam at 3e-4 times 0.75 every 200 epochs, 1000 epochs, one sample, no warm-up.
AUXILIARY_PAPER = ["--n-labelled", "100", "--hidden", "500", "500", "--activation", "relu", "--z-dim", "100",
                   "--set", "a_dim=100", "--batch-size", "100", "--lr", "3e-4", "--lr-schedule", "step",
                   "--lr-step", "200", "--lr-gamma", "0.75", "--warmup", "0", "--epochs", "1000"]
#: What every semi-supervised recipe adds: the epoch best by the validation error is the one
#: scored (the test error is the number; no log-likelihood).
CLASSIFYING = ["--keep-best", "--eval-k", "0"]
#: Where every auxiliary-model recipe departs from its authors' code, and why.
AUXILIARY_DIFFERENCES = ("the authors' code trains on the training and validation images together (60,000) "
                         "and scores the test set; we train on 50,000 and keep 10,000 to select the epoch "
                         "by its validation error. Their weights start from Glorot's normal and their "
                         "biases near 0; ours from minivae's initialization")
#: Where every IWAE-paper recipe departs from it, and why.
IWAE_DIFFERENCES = ("the authors' code runs Adam with beta1 0.99 and its second moments started at 1, and "
                    "rounds each stage's rate (7.2e-4 for 7.197e-4); we keep Adam's usual beta1 0.9 and zeros "
                    "(minivae has no setting for them) and the exact rates. Their epsilon is added to the root "
                    "of the second moment before its bias correction, ours after it (the same once "
                    "1 - 0.999^t is near 1, a few thousand steps in). Their epochs pass over 59,600 training "
                    "images (400 kept for validation), ours over minivae's 50,000 (10,000 kept), so the "
                    "3,280 epochs take 16% fewer steps; and their decoder's output bias starts at the logit "
                    "of the training images' mean, ours at random like every bias. The authors' code scores "
                    "the last epoch; we score the epoch best by the validation ELBO (the test set gives only "
                    "the final number)")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A row of the results table as its paper trained it: ``args`` of ``minivae train`` (all
    but --seed, --device and --out), the paper's figure and where it was read, and how we differ."""
    args: list
    paper: str
    differences: str


RECIPES = {
    "vae-1layer": Recipe(["--model", "vae", "--z-dim", "50", *IWAE_PAPER, *SCORING],
                         "86.76 (Burda et al. 2015, Table 1, VAE, 1 stochastic layer; read in the paper)",
                         IWAE_DIFFERENCES),
    "iwae-1layer-k50": Recipe(["--model", "iwae", "--set", "k=50", "--z-dim", "50", *IWAE_PAPER, *SCORING],
                              "84.78 (Burda et al. 2015, Table 1, IWAE k = 50, 1 stochastic layer; read in "
                              "the paper)", IWAE_DIFFERENCES),
    "iwae-2layer-k50": Recipe(["--model", "iwae", "--set", "layers=2", "--set", "k=50", "--z-dim", "50",
                               *IWAE_PAPER, *SCORING],
                              "82.90 (Burda et al. 2015, Table 1, IWAE k = 50, 2 stochastic layers: 100 and "
                              "50 units, 2x200 and 2x100 tanh; read in the paper)", IWAE_DIFFERENCES),
    "sdgm-ssl-100": Recipe(["--model", "sdgm-ssl", *AUXILIARY_PAPER, *CLASSIFYING],
                           "1.32% ± 0.07 (Maaloe et al. 2016, SDGM, 100 labels; second-hand, from Salimans "
                           "et al. 2016, Table 1)", AUXILIARY_DIFFERENCES),
    "adgm-ssl-100": Recipe(["--model", "adgm-ssl", *AUXILIARY_PAPER, *CLASSIFYING],
                           "0.96% ± 0.02 (Maaloe et al. 2016, ADGM, 100 labels; second-hand, from Salimans "
                           "et al. 2016, Table 1)",
                           AUXILIARY_DIFFERENCES + ". The authors' code trains the SDGM only: the ADGM takes "
                           "its settings (our choice)"),
}


def command(name, folder, device, seed=0):
    """The ``minivae train`` arguments of the recipe ``name`` with the seed ``seed``, its run in ``folder``."""
    return ["train", *RECIPES[name].args, "--seed", str(seed), "--device", device, "--out", str(folder)]


def train_for(argv, seconds, launcher):
    """Run ``launcher + argv`` for at most ``seconds``, then stop it with SIGTERM (the trainer
    saves its checkpoint at the end of the step) and wait for it; its exit status."""
    process = subprocess.Popen([*launcher, *argv])
    try:
        return process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        return process.wait()


def pack(folder, path):
    """Write the run ``folder`` (its files, without the temporary files of a write cut off)
    into the tar file ``path``, written beside it first and then moved into place."""
    partial = path.with_name(path.name + ".partial")
    with tarfile.open(partial, "w") as tar:
        for file in sorted(folder.iterdir()):
            if file.is_file() and not file.name.endswith(".tmp"):
                tar.add(file, arcname=f"{folder.name}/{file.name}")
    partial.replace(path)


def piece(name, seconds, runs, out, device, launcher, seed=0):
    """Train a piece of the run of the recipe ``name`` with the seed ``seed`` (see the module
    docstring); its exit status: that of the trainer, 143 when it was stopped at its time."""
    run = f"{name}-seed{seed}"
    folder = Path(runs) / run
    resume = (folder / CHECKPOINT).is_file()
    # Files of a run without a checkpoint: a first piece stopped before the trainer could save one
    # (before its signal handler was set). Nothing trained is lost by starting again.
    start = ["--resume"] if resume else ["--overwrite"] if holds_run(folder) else []
    argv = [*command(name, folder, device, seed), "--no-progress", *start]
    print(f"piece of {run} ({'resumed' if resume else 'a new run'}), at most {seconds} s: "
          f"minivae {' '.join(argv)}", flush=True)
    status = train_for(argv, seconds, launcher)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if holds_run(folder):
        pack(folder, out / f"{run}.tar")
        shown = " ".join(["minivae", *command(name, Path("runs") / run, device, seed)])
        # No --wall-seconds: no one command trained the run, and this piece's time would read as the
        # whole run's. The record's epoch seconds, by device, are the run's time.
        record_run.main([str(folder), "--out", str(out), "--name", run, "--allow-unfinished",
                         "--command", f"{shown} (in pieces of at most {seconds:g} s)"])
    return status


def main(argv=None):
    """``list`` the recipes, or train a ``piece`` of one (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="the recipes: command, paper figure, differences")
    p = sub.add_parser("piece", help="train a piece of a recipe's run")
    p.add_argument("name", choices=list(RECIPES))
    p.add_argument("--seconds", type=float, required=True, help="stop the trainer after this many seconds")
    p.add_argument("--seed", type=int, default=0, help="the run's seed (of a semi-supervised model: also its "
                                                       "labelled images)")
    p.add_argument("--runs", default="runs/paper", help="the folder of the recipes' run folders")
    p.add_argument("--out", default="paper_runs_out", help="where the packed run and its record go")
    p.add_argument("--device", default="gpu", choices=("cpu", "gpu"))
    args = parser.parse_args(argv)
    if args.action == "list":
        for name, recipe in RECIPES.items():
            print(f"{name}: minivae {' '.join(command(name, Path('runs') / f'{name}-seed0', 'gpu'))}\n"
                  f"    paper: {recipe.paper}\n    differences: {recipe.differences}")
        return 0
    return piece(args.name, args.seconds, args.runs, args.out, args.device, [sys.executable, "-m", "minivae"],
                 args.seed)


if __name__ == "__main__":
    sys.exit(main())
