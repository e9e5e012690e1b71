"""Step time against batch size, CPU against GPU: ``docs/img/step_time_vs_batch.png``.

Reads the ``bench_train_step.py`` results (``benchmarks/results/train_step_*.json``) and draws,
on log-log axes, milliseconds per training step of the default VAE against the batch size:

* CPU runs with ``--cpu-threads`` threads (default 2): minivae and PyTorch (solid, open marks);
* GPU runs (``--device gpu``): minivae eager, PyTorch eager and, where they were measured,
  minivae in graph mode and PyTorch with the whole step in one CUDA graph (dashed, filled marks).

The newest file of each kind is used (by the date inside it). Only measured points are drawn:
a library or batch size missing from a run is missing from the picture.

    python benchmarks/plot_step_time.py                 # writes docs/img/step_time_vs_batch.png
    python benchmarks/plot_step_time.py --out other.png --cpu-threads 1
"""
import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DEFAULT_OUT = HERE.parent / "docs" / "img" / "step_time_vs_batch.png"

#: library key in the JSON -> (legend label, colour)
LIBRARIES = {
    "minivae": ("minivae (eager)", "tab:blue"),
    "minivae-graph": ("minivae, graph mode", "tab:green"),
    "torch": ("PyTorch (eager)", "tab:orange"),
    "torch-graph": ("PyTorch, whole step in a CUDA graph", "tab:red"),
}


def newest_runs(results_dir, cpu_threads):
    """The newest CPU run with ``cpu_threads`` threads and the newest GPU run (None if absent)."""
    cpu = gpu = None
    for path in sorted(Path(results_dir).glob("train_step_*.json")):
        r = json.loads(path.read_text())
        if r.get("retain_freed_memory"):
            continue
        if r.get("device") == "gpu":
            if gpu is None or r["date"] > gpu["date"]:
                gpu = r
        elif r.get("threads") == cpu_threads and (cpu is None or r["date"] > cpu["date"]):
            cpu = r
    return cpu, gpu


def series(run):
    """{library: ([batch sizes], [ms per step])} of one run, batch sizes ascending."""
    out = {}
    for b in sorted(run["results"], key=int):
        for lib, v in run["results"][b].items():
            if lib in LIBRARIES:
                xs, ys = out.setdefault(lib, ([], []))
                xs.append(int(b))
                ys.append(v["ms_per_step"])
    return out


def device_label(run):
    """Where a run ran, for the legend: the GPU's name, or "CPU, <threads> threads"."""
    if run.get("device") == "gpu":
        return (run.get("gpu") or {}).get("name", "GPU")
    return f"CPU, {run.get('threads')} threads"


def plot(cpu, gpu, out, cpu_threads):
    """Draw the runs given (either may be None) into ``out``; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    if cpu is None and gpu is None:
        raise SystemExit(f"no train_step results to plot (CPU with {cpu_threads} threads, or GPU)")
    fig, ax = plt.subplots(figsize=(7, 4.6))
    for run, style, fill in ((cpu, "-", "none"), (gpu, "--", None)):
        if run is None:
            continue
        where = device_label(run)
        for lib, (xs, ys) in series(run).items():
            label, colour = LIBRARIES[lib]
            ax.plot(xs, ys, style, marker="o", color=colour, markerfacecolor=fill or colour,
                    label=f"{label}, {where}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):  # plain numbers, not powers of ten
        axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(matplotlib.ticker.FuncFormatter(
            lambda v, _: f"{v:g}" if f"{v:g}"[0] in "25" else ""))
    ax.set_xlabel("batch size (images per step)")
    ax.set_ylabel("milliseconds per training step")
    ax.set_title("One training step of the default VAE (784-512-256-50, Adam, float32)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    dates = ", ".join(f"{device_label(r)} {r['date'][:10]}" for r in (cpu, gpu) if r is not None)
    fig.text(0.01, 0.01, f"benchmarks/bench_train_step.py: {dates}", fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv=None):
    """Draw the newest CPU and GPU train_step results into ``--out``
    (docs/img/step_time_vs_batch.png); returns its path."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default=str(RESULTS), help="folder of train_step_*.json")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--cpu-threads", type=int, default=2, help="which CPU runs to draw (default 2)")
    args = parser.parse_args(argv)
    cpu, gpu = newest_runs(args.results, args.cpu_threads)
    path = plot(cpu, gpu, args.out, args.cpu_threads)
    print(f"wrote {path}" + ("" if gpu else " (no GPU run yet: CPU only)"))
    return path


if __name__ == "__main__":
    main()
