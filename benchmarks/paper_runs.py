"""The papers' own settings for rows of the results table, trained in pieces of bounded time.

    python benchmarks/paper_runs.py list
    python benchmarks/paper_runs.py status [--runs DIR]
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
and why they differ; model selection and early stopping use the validation split only. A recipe
built on another's trained model (M1+M2 on its M1) starts only once that run, of seed 0, has
finished in DIR, and takes the model it selected.
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

from minivae.cli import build_parser  # noqa: E402
from minivae.data import num_batches  # noqa: E402
from minivae.data.mnist import SPLIT_SIZES  # noqa: E402
from minivae.runs import CHECKPOINT, RESULTS, holds_run, read_checkpoint_document  # noqa: E402

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


#: The Ladder VAE's training (Sonderby et al. 2016; read in the authors' code, github.com/casperkaae/LVAE,
#: README.md and run_models.py): below each stochastic layer two dense layers of batch-normalized leaky
#: ReLUs (slope 0.01, minivae's); each bottom-up block above the first reads the mean estimate of the
#: layer below (their only_mu_up); every mean and variance layer batch-normalized, each variance
#: softplus(a) + 1e-5; a KL warm-up from 0 to 1 over 200 epochs, Adam at a constant 2e-4
#: with epsilon 1e-4 on gradients rescaled to a joint norm of at most 4 and then clipped to 0.9 each,
#: batches of 256, 2000 epochs, one sample; before it scores, the batch-norm statistics of one batch
#: of all the training images (--bn-statistics pass). The code's example is the three-layer
#: model (512-256-128, z 64-32-16); the five layers extend it to the paper's MNIST sizes, as quoted
#: second-hand (512-256-128-64-32, z 64-32-16-8-4).
LADDER_PAPER = ["--hidden", "512", "256", "128", "64", "32", "--set", "z_dims=64,32,16,8,4",
                "--set", "mlp_layers=2", "--set", "batch_norm=true", "--set", "up_input=mean",
                "--set", "variance=softplus", "--set", "batch_norm_heads=true", "--activation", "leaky_relu",
                "--warmup", "200", "--warmup-start", "0", "--batch-size", "256", "--lr", "2e-4",
                "--lr-schedule", "constant", "--adam-eps", "1e-4", "--clip-norm", "4", "--clip-value", "0.9",
                "--bn-statistics", "pass", "--epochs", "2000"]
#: Where the Ladder VAE recipe departs from its authors' code, and why.
LADDER_DIFFERENCES = ("the authors' example does not share the top-down pass with the generative model "
                      "(ladder_share_params False): its inference merges with networks of its own, and its "
                      "p(z_l | z_{l+1}) takes the width of the block below z_l (512 for p(z_1 | z_2)); "
                      "minivae's Ladder VAE merges with its generative p(z_l | z_{l+1}), of the width of the "
                      "block above. "
                      "Their code adds the variance floor only inside the log-densities, ours to each "
                      "variance; it starts the weights from Glorot's initialization, normalizes with an "
                      "epsilon of 1e-10 (ours 1e-5), and clips the Bernoulli means to [1e-5, 1 - 1e-5]: minivae has no "
                      "such settings. Its pass for the batch-norm statistics keeps their variance biased, "
                      "ours unbiased (a factor of 50,000 / 49,999), and binarizes the images once, ours as "
                      "each epoch's steps saw them. "
                      "It trains on the training and validation images together (60,000) with no "
                      "validation; we train on 50,000 and score the epoch best by the validation ELBO")
#: The planar flows' training (Rezende & Mohamed 2015; no authors' code, read second-hand in a
#: reproduction, github.com/andrehuang/normalizing-flows-reproduce): z of 40 units, 2x400 ReLU
#: networks, the flows' parameters given by the encoder, batches of 100, the annealed free energy
#: (the paper's eq. 20: beta_t weighs log p(x, z_K); our --set annealing=joint) with
#: beta_t = min(1, 0.01 + t/10000) over the steps t = 1, 2, ... (ours counts from 0: a start of
#: 0.0101), RMSprop at a constant 1e-5 with momentum 0.9
#: (PyTorch's, as ours: alpha 0.99, eps 1e-8), 500,000 steps (1000 epochs).
FLOW_PAPER = ["--z-dim", "40", "--hidden", "400", "400", "--activation", "relu", "--batch-size", "100",
              "--set", "annealing=joint", "--warmup", "10000", "--warmup-unit", "step", "--warmup-start", "0.0101",
              "--optimizer", "rmsprop", "--momentum", "0.9", "--lr", "1e-5", "--lr-schedule", "constant",
              "--epochs", "1000"]
#: Where the planar-flow recipe departs from the paper, and why.
FLOW_DIFFERENCES = ("the architecture, the schedule and the optimizer's settings are second-hand, from a "
                    "reproduction, not from the paper's text. The reproduction scores the last epoch; we "
                    "score the epoch best by the validation ELBO")
#: The M2 of M1+M2 as its authors trained it (Kingma et al. 2014; read in the authors' code,
#: github.com/dpkingma/nips14-ssl, run_2layer_ssl.py and learn_yz_x_ss.py): one softplus layer (of
#: 300 units for 100 labels), z of 50 units, each labelled image weighed as one unlabelled image with
#: the classifier's term scaled by alpha = 0.1 N / N_l (our labelled_weight "image" and default alpha),
#: a N(0, 1) prior on the weights (its gradient is our weight decay of 1 / 50,000 on the mean loss),
#: Adam at a constant 3e-4, 3000 passes over the unlabelled images, no warm-up. Each of their 100 steps an epoch takes
#: 499 unlabelled images and 1 labelled; each of our 100 takes 500 unlabelled and 1 labelled.
M2_PAPER = ["--activation", "softplus", "--z-dim", "50", "--n-labelled", "100", "--set", "labelled_weight=image",
            "--batch-size", "500", "--labelled-batch-size", "1", "--lr", "3e-4", "--lr-schedule", "constant",
            "--weight-decay", "2e-5", "--warmup", "0", "--epochs", "3000"]
#: Where every M2 recipe departs from its authors' code, and why.
M2_DIFFERENCES = ("their code puts its N(0, 1) prior on the weight matrices of the generative and inference "
                  "networks and on all of the classifier's parameters, our weight decay on every parameter; "
                  "it starts the weights with a standard deviation of 1e-3 and runs Adam without its bias "
                  "correction and epsilon: minivae has no such settings. Its steps take 499 unlabelled "
                  "images and 1 labelled, ours 500 and 1. It scores the last epoch; we score the epoch "
                  "best by the validation error")
#: M1 as the authors' M1+M2 code loads it (read in github.com/dpkingma/nips14-ssl, gpulearn_z_x.py):
#: 2x500 softplus networks, z of 50 units, batches of 1000, Adam at 3e-4 with epsilon 1e-10 on
#: gradients of the batch's sum plus 0.02 times each parameter (a N(0, 1) prior: our weight decay of
#: 2e-5 on the batch mean), no warm-up.
M1_PAPER = ["--hidden", "500", "500", "--activation", "softplus", "--z-dim", "50", "--batch-size", "1000",
            "--lr", "3e-4", "--lr-schedule", "constant", "--adam-eps", "1e-10", "--weight-decay", "2e-5",
            "--warmup", "0", "--epochs", "3000"]


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A row of the results table as its paper trained it: ``args`` of ``minivae train`` (all
    but --seed, --device and --out), the paper's figure and where it was read, how we differ, and
    ``built_on``: the settings that name another recipe's run (--set NAME=RUN), of seed 0, whose
    model this one is built on."""
    args: list
    paper: str
    differences: str
    built_on: dict = dataclasses.field(default_factory=dict)


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
    "ladder-5layer": Recipe(["--model", "ladder", *LADDER_PAPER, *SCORING],
                            "81.74 (Sonderby et al. 2016, Ladder VAE, as quoted in Kingma et al. 2016 (IAF) "
                            "Table 1; its setting, 5 stochastic layers, not confirmed; second-hand)",
                            LADDER_DIFFERENCES),
    "flow-planar-k80": Recipe(["--model", "flow", "--set", "flows=80", *FLOW_PAPER, *SCORING],
                              "85.10 (Rezende & Mohamed 2015, Table 2, planar flows, K = 80; second-hand)",
                              FLOW_DIFFERENCES),
    "m2-ssl-100": Recipe(["--model", "m2", "--hidden", "500", *M2_PAPER, *CLASSIFYING],
                         "11.97% ± 1.71 (Kingma et al. 2014, Table 1, M2, 100 labels; second-hand)",
                         "the authors' code has no M2 on the images with 100 labels: we take the M2 of its "
                         "M1+M2, on the binarized images (a Bernoulli likelihood), with the 500 units that "
                         "code gives for more labels; " + M2_DIFFERENCES),
    "m1-vae": Recipe(["--model", "vae", *M1_PAPER, *SCORING],
                     "- (the M1 of m1m2-ssl-100; Kingma et al. 2014 give no figure of it alone)",
                     "the authors' code starts the weight matrices at N(0, 1 / fan-in) and the biases with "
                     "a standard deviation of 0.01, and adds Adam's epsilon before the bias correction, "
                     "ours after it; minivae has no such settings. It trains until 10,000 epochs pass without a better "
                     "validation score and loads its last epoch; we train 3000 epochs and keep the epoch best "
                     "by the validation ELBO, which M1+M2 then takes"),
    "m1m2-ssl-100": Recipe(["--model", "m1m2", "--hidden", "300", *M2_PAPER, *CLASSIFYING],
                           "3.33% ± 0.14 (Kingma et al. 2014, Table 1, M1+M2, 100 labels; second-hand)",
                           "the authors' code keeps only the features of M1 whose means vary with a standard "
                           "deviation above 0.1 over the first 1,000 unlabelled images; minivae's M1+M2 "
                           "takes all 50; " + M2_DIFFERENCES, built_on={"m1": "m1-vae"}),
}
#: The seed of the run a recipe is built on (``Recipe.built_on``): one M1 for every label draw,
#: as the authors' code loads one.
BUILT_ON_SEED = 0


def run_name(name, seed):
    """The name of the run folder (and of its tar and record) of the recipe ``name`` with the seed
    ``seed``: NAME-seedN."""
    return f"{name}-seed{seed}"


def command(name, folder, device, seed=0, resume=False):
    """The ``minivae train`` arguments of the recipe ``name`` with the seed ``seed``, its run in
    ``folder``, and the runs it is built on beside it (``built_on_runs``) unless it is a ``resume``:
    the run holds their models then, and their folders, named where it started, may be elsewhere."""
    built_on = [] if resume else [arg for setting, _, other in built_on_runs(name, folder)
                                  for arg in ("--set", f"{setting}={other}")]
    return ["train", *RECIPES[name].args, *built_on, "--seed", str(seed), "--device", device,
            "--out", str(folder)]


def built_on_runs(name, folder):
    """The runs that the recipe ``name``, its run in ``folder``, is built on, as (setting, recipe,
    folder): the folder beside ``folder`` of that recipe's run of the seed ``BUILT_ON_SEED``."""
    return [(setting, other, Path(folder).parent / run_name(other, BUILT_ON_SEED))
            for setting, other in RECIPES[name].built_on.items()]


def not_ready(name, folder, seconds, out):
    """Why a new run of the recipe ``name`` in ``folder`` cannot start yet, with what readies it: a
    run it is built on is missing or has not finished (no results.json); None when none is."""
    for _, other, built_on in built_on_runs(name, folder):
        train = (f"python benchmarks/paper_runs.py piece {other} --seconds {seconds:g} --seed {BUILT_ON_SEED} "
                 f"--runs {folder.parent} --out {out}")
        if not holds_run(built_on):
            return (f"{name} is built on the run of {other} in {built_on}, which holds none: unpack it there "
                    f"if it was trained elsewhere (tar -xf {built_on.name}.tar -C {folder.parent}), else "
                    f"train it first ({train})")
        if not (built_on / RESULTS).is_file():
            return (f"{name} is built on the run of {other} in {built_on}, which has not finished (no "
                    f"{RESULTS}): train its pieces first ({train})")
    return None


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
    docstring); its exit status: that of the trainer, 143 when it was stopped at its time (also
    by the signal itself, before the trainer had set its handler: 128 + the signal's number, as a
    shell gives it, where the process's status is minus that number)."""
    run = run_name(name, seed)
    folder = Path(runs) / run
    resume = (folder / CHECKPOINT).is_file()
    # Files of a run without a checkpoint: a first piece stopped before the trainer could save one
    # (before its signal handler was set). Nothing trained is lost by starting again.
    start = ["--resume"] if resume else ["--overwrite"] if holds_run(folder) else []
    # A new run takes the trained models it is built on; a resumed one holds them in its checkpoint.
    problem = None if resume else not_ready(name, folder, seconds, out)
    if problem:
        print(f"paper_runs.py: {problem}", file=sys.stderr)
        return 2
    argv = [*command(name, folder, device, seed, resume), "--no-progress", *start]
    print(f"piece of {run} ({'resumed' if resume else 'a new run'}), at most {seconds} s: "
          f"minivae {' '.join(argv)}", flush=True)
    code = train_for(argv, seconds, launcher)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if holds_run(folder):
        pack(folder, out / f"{run}.tar")
        shown = " ".join(["minivae", *command(name, Path("runs") / run, device, seed)])
        # No --wall-seconds: no one command trained the run, and this piece's time would read as the
        # whole run's. The record's epoch seconds, by device, are the run's time.
        record_run.main([str(folder), "--out", str(out), "--name", run, "--allow-unfinished",
                         "--command", f"{shown} (in pieces of at most {seconds:g} s)",
                         "--paper", RECIPES[name].paper])
    return 128 - code if code < 0 else code


def steps(name):
    """(epochs, steps an epoch, steps in all) of the recipe ``name``'s run: the batches of an epoch
    are those of MNIST's 50,000 training images, the last one shorter where they do not divide."""
    args = build_parser().parse_args(command(name, Path("runs") / name, "cpu"))
    per_epoch = num_batches(SPLIT_SIZES["train"], args.batch_size)
    return args.epochs, per_epoch, args.epochs * per_epoch


def status(runs):
    """Where each run of a recipe in the folder ``runs`` stands, one line each: the epochs done of
    its recipe's, the batches done of the next, the pieces it was trained in, the seconds of its
    epochs by device, and whether it has finished (results.json), for choosing the next piece."""
    lines = []
    for folder in sorted(Path(runs).glob("*-seed*")):
        if folder.name.rsplit("-seed", 1)[0] not in RECIPES or not holds_run(folder):
            continue
        if not (folder / CHECKPOINT).is_file():
            lines.append(f"{folder.name}: no checkpoint yet (its next piece starts it again)")
            continue
        meta, config = read_checkpoint_document(folder)
        _, seconds = record_run.pieces_and_devices(record_run.epoch_metrics(folder))
        spent = ", ".join(f"{s:g} s on {device}" for device, s in (seconds or {}).items()) or "no epoch yet"
        state = "finished" if (folder / RESULTS).is_file() else "not finished"
        lines.append(f"{folder.name}: {meta['epoch']} of {config.epochs} epochs and {meta['batch']} batches, "
                     f"{meta.get('piece', 1)} piece(s), {spent}; {state}")
    return lines


def main(argv=None):
    """``list`` the recipes, tell the ``status`` of their runs, or train a ``piece`` of one (see the
    module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="the recipes: command, paper figure, differences")
    p = sub.add_parser("status", help="where each recipe's run in --runs stands")
    p.add_argument("--runs", default="runs/paper", help="the folder of the recipes' run folders")
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
            epochs, per_epoch, total = steps(name)
            print(f"{name}: minivae {' '.join(command(name, Path('runs') / run_name(name, 0), 'gpu'))}\n"
                  f"    steps: {epochs} epochs of {per_epoch}, {total:,} in all\n"
                  f"    paper: {recipe.paper}\n    differences: {recipe.differences}")
        return 0
    if args.action == "status":
        print("\n".join(status(args.runs)) or f"no run of a recipe in {args.runs}")
        return 0
    return piece(args.name, args.seconds, args.runs, args.out, args.device, [sys.executable, "-m", "minivae"],
                 args.seed)


if __name__ == "__main__":
    sys.exit(main())
