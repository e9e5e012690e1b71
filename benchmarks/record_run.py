"""Record a run folder (config, per-epoch metrics, final results) as a benchmark JSON.

    python benchmarks/record_run.py RUN --command "the minivae train command used" [--name NAME]
        [--eval RUN/eval_k5000.json --eval-command "the minivae eval command used"]
        [--out DIR] [--wall-seconds S] [--allow-unfinished]

For runs made with ``minivae train`` directly (``bench_mnist.py`` records its own). The JSON holds
the run's config, every epoch's metrics, summed and median epoch seconds, the seconds by device
and the number of pieces (trainings: a long run may be resumed on several machines), its final
validation metrics and its ``results.json``, plus the usual machine / versions / date fields of
this machine: record a run on the machine that trained it. A GPU run (its config says
``device="gpu"``) also gets the GPU's name, memory, CUDA and CuPy versions, and is named after
the GPU. ``--eval`` adds a later ``minivae eval`` of the run (its test ELBO, NLL, standard error,
k, images and effective sample sizes replace those of ``results.json``, whose reconstruction and
KL parts are then dropped); an evaluation of another model than the run's is refused: the run's is
the one at the end of its last epoch, or for a run trained with ``--keep-best`` the epoch it
selected (an evaluation of an earlier checkpoint, one saved inside an epoch, or with ``--last``).
``--allow-unfinished`` records a run that stopped before its final
evaluation, with ``finished`` false and no test scores (benchmarks/gpu_check.sh keeps the epochs
of a recipe cut short that way). A note on the run goes in parentheses at the end of
``--command`` (report.py shows it beside the row).
"""
import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import command_line, default_machine_name, gpu_info, machine_info, versions, write_result  # noqa: E402

from minivae.runs import read_checkpoint_document, read_metrics  # noqa: E402


def epoch_metrics(run):
    """The records of ``run``'s metrics.jsonl of the epochs done (those with a validation ELBO;
    ``minivae.runs.read_metrics``, which drops a last line cut off by a crash); none when the
    file is absent."""
    return [record for record in read_metrics(run) if "valid_elbo" in record]


def pieces_and_devices(metrics):
    """(the number of trainings the run was trained in, {device: the seconds of its epochs}) from
    its epoch ``metrics``, whose lines name the training (``piece``: 1, then one more at each
    resume) and the device that finished each epoch: "cpu", or the GPU's name where the line
    gives it (a long run's pieces may train on several kinds of GPU), else "gpu"; (None, None)
    for a run recorded before they did."""
    if not metrics or not all("piece" in m and "device" in m for m in metrics):
        return None, None
    seconds = {}
    for m in metrics:
        device = m.get("gpu") or m["device"]
        seconds[device] = seconds.get(device, 0.0) + m["seconds"]
    # Rounded once summed, as train_seconds_all_epochs is: rounding each sum on the way would drop
    # up to 0.05 s an epoch (a 0.12 s GPU epoch 150 times gave 15.0 s for 18.0).
    return max(m["piece"] for m in metrics), {device: round(s, 1) for device, s in seconds.items()}


def selection(run):
    """The epoch that the run in the folder ``run``, trained with ``--keep-best``, selected:
    {"epoch", "by", "score"} as its results.json records it, or for a run not finished, the best
    so far that its checkpoint records; None for a run trained without it (or before an epoch ended)."""
    if not json.loads((Path(run) / "config.json").read_text()).get("keep_best"):
        return None
    results = Path(run) / "results.json"
    if results.exists():
        return json.loads(results.read_text()).get("selected")
    return read_checkpoint_document(run)[0].get("best")


def other_model(result, epochs, selected=None):
    """Which other model than the run's the ``minivae eval`` or ``minivae cluster`` ``result``
    scored, in words; None when it scored the run's. The run's model is the one of epoch
    ``selected["epoch"]`` for a run that selected one (``selection``), else that at the end of the
    last of the ``epochs`` epochs its metrics.jsonl records (a result that names no position,
    written before results did, is taken for it). A run resumed for more epochs keeps the results
    of its earlier checkpoints, a run stopped inside an epoch was scored with batches of it that no
    recorded epoch holds, and ``--last`` scores a run's last epoch, not the one it selected."""
    if selected is not None:
        chosen = (result.get("selected") or {}).get("epoch")
        if chosen == selected["epoch"]:
            return None
        instead = f"not the epoch it selected, {selected['epoch']}, the best by {selected['by']}"
        return f"at {'its last checkpoint (--last)' if chosen is None else f'epoch {chosen}'}, {instead}"
    done, batch = result.get("epochs", epochs), result.get("batch", 0)
    if (done, batch) == (epochs, 0):
        return None
    return f"after {done}" + (f" epochs and {batch} batches" if batch else "") + f" of its {epochs} epochs"


def main(argv=None):
    """Read the run folder and write ``run_<NAME>.json`` (default NAME: the run folder's name and
    the machine's) into ``--out`` (default benchmarks/results)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("--name", help="the file is run_NAME.json (default: RUN's folder name, then the machine's)")
    parser.add_argument("--command", required=True, help="the command that trained the run")
    parser.add_argument("--eval", help="an eval_k*.json that `minivae eval` wrote for this run")
    parser.add_argument("--eval-command", help="the command that wrote --eval")
    parser.add_argument("--out", help="output folder (default benchmarks/results)")
    parser.add_argument("--wall-seconds", type=float, help="the train command's wall time, start to exit")
    parser.add_argument("--paper", help="the paper's figure that the run reproduces, and where it was read "
                                        "(default: the report's figure for the run's model)")
    parser.add_argument("--allow-unfinished", action="store_true",
                        help="record a run without results.json (stopped early) without test scores")
    args = parser.parse_args(argv)
    if bool(args.eval) != bool(args.eval_command):
        parser.error("--eval and --eval-command go together")
    run = Path(args.run)
    finished = (run / "results.json").exists()
    if not finished and not args.eval and not args.allow_unfinished:
        parser.error(f"{args.run} has no results.json: give the evaluation with --eval")
    config = json.loads((run / "config.json").read_text())
    metrics = epoch_metrics(run)
    seconds = [m["seconds"] for m in metrics]
    gpu = gpu_info() if config.get("device") == "gpu" else None
    pieces, seconds_by_device = pieces_and_devices(metrics)
    payload = {"run_command": args.command,
               "config": config,
               "device": config.get("device", "cpu"),
               "gpu": gpu,
               "versions": versions(*(["cupy"] if gpu else [])),
               "finished": finished,
               "epochs": len(metrics),
               "train_seconds_all_epochs": round(sum(seconds), 1),
               "pieces": pieces,
               "seconds_by_device": seconds_by_device,
               "seconds_per_epoch_median": round(statistics.median(seconds), 2) if seconds else None,
               "command_wall_seconds": args.wall_seconds,
               "final_epoch": metrics[-1] if metrics else None,
               "epoch_metrics": metrics,
               "results": (json.loads((run / "results.json").read_text()) if finished
                           else {"epochs": len(metrics)})}  # stopped before its final evaluation
    if args.paper:
        payload["paper"] = args.paper
    if args.eval:
        ev = json.loads(Path(args.eval).read_text())
        where = other_model(ev, len(metrics), selection(run))
        if where:
            parser.error(f"--eval {args.eval} scored the run {where}; score it again with "
                         f"`minivae eval {args.run}` (after `minivae train --out {args.run} --resume` if "
                         f"it stopped inside an epoch)")
        # the parts of the ELBO that the evaluation's replaces, and the training's own effective
        # sample sizes (of its k, not the evaluation's)
        for key in ("test_rec", "test_kl", "ess_median", "ess_min"):
            payload["results"].pop(key, None)
        payload["results"].update(test_nll=ev["test_nll"], test_nll_stderr=ev.get("test_nll_stderr"),
                                  eval_k=ev["k"], n_test=ev["n_test"], test_elbo=ev["test_elbo"],
                                  **{key: ev[key] for key in ("ess_median", "ess_min") if key in ev})
        payload["eval_command"] = args.eval_command
    name = args.name or f"{run.name}_{default_machine_name(machine_info(), gpu)}"
    print(write_result(f"run_{name}", payload, args.out, command=command_line(__file__, argv)))


if __name__ == "__main__":
    main()
