"""Record a finished run folder (config, per-epoch metrics, final results) as a benchmark JSON.

    python benchmarks/record_run.py RUN --name NAME --command "the minivae train command used"
        [--eval RUN/eval_k5000.json --eval-command "the minivae eval command used"]

For runs made with ``minivae train`` directly (``bench_mnist.py`` records its own). The JSON holds
the run's config, epochs, summed and median epoch seconds, its final validation metrics and its
``results.json``, plus the usual machine / versions / date fields of this machine. ``--eval``
adds a later ``minivae eval`` of the run (its test ELBO, NLL, standard error, k, images and
effective sample sizes replace those of ``results.json``, whose reconstruction and KL parts are
then dropped).
"""
import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import versions, write_result  # noqa: E402


def main(argv=None):
    """Read the run folder and write ``benchmarks/results/run_<NAME>.json``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("--name", required=True)
    parser.add_argument("--command", required=True, help="the command that trained the run")
    parser.add_argument("--eval", help="an eval_k*.json that `minivae eval` wrote for this run")
    parser.add_argument("--eval-command", help="the command that wrote --eval")
    args = parser.parse_args(argv)
    if bool(args.eval) != bool(args.eval_command):
        parser.error("--eval and --eval-command go together")
    run = Path(args.run)
    finished = (run / "results.json").exists()
    if not finished and not args.eval:
        parser.error(f"{args.run} has no results.json: give the evaluation with --eval")
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
               if line.strip() and "valid_elbo" in line]
    seconds = [m["seconds"] for m in metrics]
    payload = {"run_command": args.command,
               "config": json.loads((run / "config.json").read_text()),
               "versions": versions(),
               "epochs": len(metrics),
               "train_seconds_all_epochs": round(sum(seconds), 1),
               "seconds_per_epoch_median": round(statistics.median(seconds), 2),
               "final_epoch": metrics[-1],
               "results": (json.loads((run / "results.json").read_text()) if finished
                           else {"epochs": len(metrics)})}  # stopped before its final evaluation
    if args.eval:
        ev = json.loads(Path(args.eval).read_text())
        # the parts of the ELBO that the evaluation's replaces, and the training's own effective
        # sample sizes (of its k, not the evaluation's)
        for key in ("test_rec", "test_kl", "ess_median", "ess_min"):
            payload["results"].pop(key, None)
        payload["results"].update(test_nll=ev["test_nll"], test_nll_stderr=ev.get("test_nll_stderr"),
                                  eval_k=ev["k"], n_test=ev["n_test"], test_elbo=ev["test_elbo"],
                                  **{key: ev[key] for key in ("ess_median", "ess_min") if key in ev})
        payload["eval_command"] = args.eval_command
    print(write_result(f"run_{args.name}", payload))


if __name__ == "__main__":
    main()
