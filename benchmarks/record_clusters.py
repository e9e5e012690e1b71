"""Record the clustering scores of a run (``minivae cluster``) as a benchmark JSON.

    python benchmarks/record_clusters.py RUN --command "the minivae train command used"
        [--clusters RUN/clusters_10.json ...] [--name NAME] [--out DIR]

The JSON holds the run's config and final results, the command that trained it, and every
``clusters_*.json`` of the run (or those given): their scores and the ``minivae cluster``
command that writes each again, plus the usual machine / versions / date fields of this machine.
A clustering of another model than the run's (``record_run.other_model``: the one at the end of
its last epoch, or the epoch a run trained with ``--keep-best`` selected) is refused when given,
and left out, saying so, when found in the run.
docs/results.md quotes these files.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import command_line, default_machine_name, machine_info, versions, write_result  # noqa: E402
from record_run import epoch_metrics, other_model, selection  # noqa: E402


def cluster_command(run, scores):
    """The ``minivae cluster`` command that writes ``scores`` for ``run`` again."""
    return (f"minivae cluster {run} --clusters {scores['n_clusters']} --n {scores['n']} "
            f"--seed {scores['seed']}")


def main(argv=None):
    """Read the run folder and write ``clusters_<NAME>.json`` (default NAME: the run folder's name
    and the machine's) into ``--out`` (default benchmarks/results)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("--command", required=True, help="the command that trained the run")
    parser.add_argument("--clusters", nargs="+", help="clusters_*.json files of `minivae cluster` "
                                                      "(default: every one in RUN)")
    parser.add_argument("--name", help="the file is clusters_NAME.json (default: RUN's folder name, "
                                       "then the machine's)")
    parser.add_argument("--out", help="output folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    run = Path(args.run)
    paths = [Path(p) for p in args.clusters] if args.clusters else sorted(run.glob("clusters_*.json"))
    if not paths:
        parser.error(f"{args.run} holds no clusters_*.json: run `minivae cluster {args.run}` first")
    scores = []
    epochs, selected = len(epoch_metrics(run)), selection(run)
    for path in paths:
        result = json.loads(path.read_text())
        result.pop("run", None)  # where it was on the machine that clustered it
        where = other_model(result, epochs, selected)
        if where and not args.clusters:  # (e.g. a clustering with --last beside the run's own)
            print(f"left out {path}: it clustered the run {where}", file=sys.stderr)
            continue
        if where:
            parser.error(f"{path} clustered the run {where}; cluster it again with `minivae cluster "
                         f"{args.run}` (after `minivae train --out {args.run} --resume` if it stopped "
                         f"inside an epoch)")
        scores.append({"cluster_command": cluster_command(run.name, result), **result})
    if not scores:
        parser.error(f"{args.run} holds no clustering of its model: run `minivae cluster {args.run}`")
    if not args.clusters:  # in the order of their settings, not of their names (100 before 20)
        scores.sort(key=lambda s: (s["n_clusters"], s["n"], s["seed"]))
    results = run / "results.json"
    payload = {"run_command": args.command,
               "config": json.loads((run / "config.json").read_text()),
               "results": json.loads(results.read_text()) if results.exists() else None,
               "versions": versions("sklearn"),
               "clusters": scores}
    name = args.name or f"{run.name}_{default_machine_name(machine_info())}"
    print(write_result(f"clusters_{name}", payload, args.out, command=command_line(__file__, argv)))


if __name__ == "__main__":
    main()
