"""Markdown tables from the benchmark JSON files (the README's numbers are generated, not typed).

    python benchmarks/report.py            # print the tables for every train_step_* and epoch_* result
    python benchmarks/report.py --write    # also replace the generated section of benchmarks/README.md
    python benchmarks/report.py --readme   # replace the short results section of the top-level README.md

Each table names the machine, the threads, the date and the command of the run it came from.
"""
import argparse
import dataclasses
import json
import re
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # this checkout's minivae: its defaults shape the commands
from minivae.data.mnist import SPLIT_SIZES  # noqa: E402
from minivae.models import MODELS  # noqa: E402
from minivae.models.iwae import DEFAULT_K as IWAE_DEFAULT_K  # noqa: E402
from minivae.runs import TrainConfig  # noqa: E402

RESULTS = HERE / "results"
README = HERE / "README.md"
BEGIN = "<!-- BEGIN GENERATED: benchmarks/report.py -->"
END = "<!-- END GENERATED -->"
TOP_README = HERE.parent / "README.md"
TOP_BEGIN, TOP_END = "<!-- results:begin -->", "<!-- results:end -->"


def _fmt(v, digits=2):
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _source(r):
    m = r["machine"]
    load = r.get("load_average", {})
    load_s = ""
    if load:
        load_s = f", load average {load['before'][0]:.1f} before / {load['after'][0]:.1f} after"
    gpu = f"GPU {r['gpu']['name']} (CuPy / CUDA), host " if r.get("device") == "gpu" and r.get("gpu") else ""
    return (f"{gpu}{m.get('cpu_model')} ({m.get('cores')} cores), {r.get('threads')} thread(s), "
            f"{r['date'][:10]}{load_s}; `{r['command']}`")


def _step_run_label(path, r):
    if r.get("device") == "gpu":
        return f"`{path.stem}` (GPU: {r['gpu']['name'] if r.get('gpu') else 'unnamed'})"
    return f"`{path.stem}` (CPU, {r.get('threads')} thread(s))"


def kernels_section(path):
    """One bench_kernels result: the device, the table of microseconds and the two targets."""
    from bench_kernels import TARGET_COPY_SHARE, kernel_table, markdown_table

    r = json.loads(path.read_text())
    d, s = r.get("device") or {}, r.get("summary", {})
    if not d:
        return ""
    peak = d.get("peak_bandwidth_gbps")
    # bench_kernels records None where neither the device nor its datasheet gave the peak
    peak_text = (f"peak {peak:.0f} GB/s from {d.get('peak_bandwidth_source')}" if peak is not None
                 else "peak bandwidth unknown")
    # (a case that failed has no dtype; results before the dtype was recorded were float32)
    dtype = next((row["dtype"] for row in r["results"] if "dtype" in row), "float32")
    lines = [f"`{path.stem}`: reparameterization + KL, forward + backward, {dtype}, "
             f"microseconds per call (CUDA events, median). {d['name']} ({peak_text}; a device-to-device copy "
             f"measured {d.get('measured_copy_gbps')} GB/s), "
             f"CuPy {r['versions'].get('cupy')}, {r['date'][:10]}; `{r['command']}`.", "",
             markdown_table(r["results"]), ""]
    if "mnist_speedup_fused_vs_cupy_unfused" in s:
        lines.append(f"- fused vs unfused CuPy at MNIST size (100 x 50): {s['mnist_speedup_fused_vs_cupy_unfused']}x "
                     f"(target >= 3: {_fmt(s.get('mnist_speedup_target_met'))})")
    if "fused_share_of_peak_from_1e7" in s:
        shares = ", ".join(f"{float(n):.0e} elements {100 * v:.0f}%" for n, v in s["fused_share_of_peak_from_1e7"].items())
        lines.append(f"- fused share of peak bandwidth from 1e7 elements: {shares} "
                     f"(target >= 80%: {_fmt(s.get('fused_peak_target_met'))})")
    if r.get("kernels_alone"):
        alone = s.get("kernels_alone", {})
        lines += ["", "Each kernel alone: its bandwidth (the bytes it must move) as a share of the "
                  f"{d.get('measured_copy_gbps')} GB/s copy of the same run.", "",
                  kernel_table(r["kernels_alone"]), "",
                  f"- KL and fused kernels at >= {100 * TARGET_COPY_SHARE:.0f}% of the copy in every case: "
                  f"{_fmt(alone.get('row_kernels_target_met'))}"]
    return "\n".join(lines)


def train_step_tables(r):
    """The per-library table and the targets table of one bench_train_step result."""
    blas = ", ".join(f"{b.get('internal_api')} {b.get('version')} ({b.get('num_threads')} threads)"
                     for b in (r.get("blas") or []) if b.get("user_api") == "blas")
    lines = [f"Training step, {r['model']['dtype']}, {r['model']['parameters']:,} parameters, "
             f"steady state after {r['steady_state'].get('steps', 0)} Adam steps "
             f"({100 * r['steady_state'].get('subnormal_exp_avg_fraction', 0):.1f}% of Adam's first "
             f"moments subnormal). {_source(r)}. NumPy BLAS: {blas or 'unknown'}.", "",
             "| batch | library | ms / step | images / s | time vs minivae | tracemalloc peak (MiB) "
             "| peak RSS rise (MiB) | page faults / step | eps draw (ms) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for b, row in r["results"].items():
        for lib, v in row.items():
            lines.append("| " + " | ".join([
                b, lib, _fmt(v["ms_per_step"]), _fmt(v["images_per_s"], 0), _fmt(v["time_ratio_to_minivae"]),
                _fmt(v.get("tracemalloc_peak_mib"), 1), _fmt(v.get("rss_peak_rise_mib"), 1),
                _fmt(v.get("page_faults_per_step"), 0), _fmt(v.get("eps_ms"), 3)]) + " |")
    if not r.get("finished", True):
        lines += ["", "This run was cut short: only the batch sizes above were measured."]
    if r.get("errors"):
        lines += ["", "Dropped from this run (the library failed; the others went on without it): "
                  + "; ".join(f"{lib}: {error}" for lib, error in r["errors"].items()) + "."]
    if r.get("forward_backward_only_fresh_init"):
        lines += ["", "Forward and backward only (no optimizer), from a fresh initialization:", "",
                  "| batch | library | ms / step | time vs minivae |", "|---|---|---|---|"]
        for b, row in r["forward_backward_only_fresh_init"].items():
            for lib, v in row.items():
                lines.append(f"| {b} | {lib} | {_fmt(v['ms_per_step'])} | {_fmt(v['time_ratio_to_minivae'])} |")
    lines += ["", "| batch | target | goal | this run | met |", "|---|---|---|---|---|"]
    names = {"time_vs_numpy": "minivae time / NumPy reference time",
             "throughput_vs_torch": "minivae throughput / PyTorch throughput",
             "time_vs_torch": "minivae time / PyTorch time",
             "peak_memory_vs_numpy": "minivae peak step memory / reference's (tracemalloc)",
             "time_vs_numpy_if_eps_cost_the_same": "minivae time / reference time, minivae's eps draw "
                                                   "counted at NumPy's cost (not a target)",
             "graph_time_vs_torch_graph": "minivae graph-mode time / PyTorch CUDA-graph time",
             "eager_time_vs_torch_eager": "minivae eager time / PyTorch eager time"}
    for b, targets in r.get("targets", {}).items():
        for key, t in targets.items():
            lines.append(f"| {b} | {names.get(key, key)} | {t['target']} | {_fmt(t['value'], 3)} | {_fmt(t['met'])} |")
    return "\n".join(lines)


def epoch_table(r):
    """The table of one bench_epoch result."""
    lines = [f"One MNIST epoch ({r['train_images']:,} images, batch {r['batch']}, "
             f"{r['steps_per_epoch']} steps; batch preparation {r['prepare_batches_seconds_per_epoch']:.2f} s "
             f"counted for each library). {_source(r)}.", "",
             "| library | seconds / epoch | images / s | time vs minivae |", "|---|---|---|---|"]
    for lib, v in r["results"].items():
        lines.append(f"| {lib} | {_fmt(v['seconds_per_epoch'])} | {_fmt(v['images_per_s'], 0)} | "
                     f"{_fmt(v['time_ratio_to_minivae'])} |")
    if r.get("errors"):
        lines += ["", "Dropped from this run: " + "; ".join(f"{lib}: {error}" for lib, error in r["errors"].items())
                  + "."]
    return "\n".join(lines)


#: Paper figures on MNIST: (setting, figure, how it was checked). Test NLL in nats (the papers'
#: 5000-sample bound), or test error with 100 labels. "read in the paper" means its own table was
#: read; "second-hand" means a later paper's table (or a replication's README) quoting it (the
#: original was not reachable).
PAPER = {
    "vae": ("1-layer VAE, 2x200 tanh, Burda et al. 2015 Table 1", "86.76", "read in the paper"),
    "iwae": ("1-layer IWAE k=5 / k=50, Burda et al. 2015 Table 1", "85.54 / 84.78", "read in the paper"),
    "iwae-2": ("2-layer IWAE k=5 / k=50, Burda et al. 2015 Table 1", "83.89 / 82.90", "read in the paper"),
    "gumbel": ("negative ELBO, 20x10 categorical VAE, Jang et al. 2017 Table 1", "101.5", "read in the paper"),
    "flow": ("DLGM + planar flows K=80, Rezende & Mohamed 2015", "85.10", "second-hand"),
    "ladder": ("LVAE, Sonderby et al. 2016, as quoted in Kingma et al. 2016 (IAF) Table 1; its setting "
               "not confirmed", "81.74", "second-hand"),
    "m2": ("M2, 100 labels, Kingma et al. 2014 Table 1", "11.97% ± 1.71", "second-hand"),
    "m1m2": ("M1+M2, 100 labels, Kingma et al. 2014 Table 1", "3.33% ± 0.14", "second-hand"),
    "adgm-ssl": ("ADGM, 100 labels, Maaloe et al. 2016", "0.96% ± 0.02", "second-hand"),
    "sdgm-ssl": ("SDGM, 100 labels, Maaloe et al. 2016", "1.32% ± 0.07", "second-hand"),
}


def _bound_k(c):
    """The k of the IWAE bound a run trained on (1: the ELBO, whose KL term beta and the warm-up weigh)."""
    if c["model"] == "iwae":
        return c.get("model_options", {}).get("k") or (c["iw_k"] if c.get("iw_k", 1) > 1 else IWAE_DEFAULT_K)
    return c.get("iw_k", 1) if c["model"] == "vae" else 1


def _warmup(c):
    """A run's KL warm-up as its row names it: ``KL warm-up 10 epochs``, or by optimizer steps and
    from a start of its own, ``KL warm-up 10000 steps from 0.01`` (a config saved before those
    settings: by epochs, from 1 / warmup)."""
    start = "" if c.get("warmup_start") is None else f" from {c['warmup_start']:g}"
    return f"KL warm-up {c.get('warmup', 0)} {c.get('warmup_unit', 'epoch')}s{start}"


def _model_name(c):
    """The row's model name: ``iwae`` for a VAE trained on the k-sample bound, ``iwae-2`` for two layers."""
    if c["model"] == "vae" and c.get("iw_k", 1) > 1:
        return "iwae"
    if c["model"] == "iwae":
        return "iwae-2" if c.get("model_options", {}).get("layers", 1) == 2 else "iwae"
    return c["model"]


def _run_folder(path):
    """A run folder as the README's commands name it: ``runs/NAME`` (recorded paths are absolute)."""
    return f"runs/{Path(path).name}"


def _arg(value):
    if isinstance(value, (list, tuple)):
        return " ".join(_arg(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _run_folder_settings(config):
    """The model settings of the recorded ``config`` that name other run folders (its model's
    ``run_options``: M1+M2's m1), as ``minivae.runs.run_folder_options`` reads them of a run."""
    return getattr(MODELS.get(config["model"]), "run_options", ())


def train_command(config):
    """The ``minivae train`` command that trains a run with the recorded ``config`` (its
    config.json) today: every setting that differs from today's defaults, then ``--out``."""
    defaults = dataclasses.asdict(TrainConfig())
    parts = ["minivae train"]
    for key, value in config.items():
        # run_models is no setting but the run's record of the runs its model is built on (M1+M2's
        # m1), which a new run makes itself from --set m1=RUN: the command line has no option for it.
        if key in ("model_options", "out", "run_models") or value == defaults[key] or (
                isinstance(value, list) and tuple(value) == tuple(defaults[key])):
            continue
        flag = f"--{key.replace('_', '-')}"
        if isinstance(value, bool):  # a switch: --keep-best, --eager (and --no-eager)
            parts.append(flag if value else f"--no-{flag[2:]}")
        else:
            parts.append(f"{flag} {_arg(value)}")
    for key, value in config.get("model_options", {}).items():
        if key in _run_folder_settings(config):
            value = _run_folder(value)
        parts.append(f"--set {key}={','.join(map(_arg, value)) if isinstance(value, list) else _arg(value)}")
    return " ".join(parts + [f"--out {_run_folder(config['out'])}"])


def _environment(command):
    """The ``NAME=value`` assignments that start a recorded shell command (e.g. the BLAS threads)."""
    return re.match(r"((?:[A-Z_][A-Z0-9_]*=\S+\s+)*)", command).group(1)


def _row_command(r, nll_k, n_test=SPLIT_SIZES["test"]):
    """The command cell of a row: the recorded environment, the train command from the config, and
    ``minivae eval`` when the row's log-likelihood was measured apart from the training (on the
    first ``n_test`` test images)."""
    c = r["config"]
    command = _environment(r.get("run_command") or "") + train_command(c)
    if nll_k and nll_k != c.get("eval_k"):
        command += f" && minivae eval {_run_folder(c['out'])} --k {nll_k}"
        if n_test < SPLIT_SIZES["test"]:
            command += f" --n {n_test}"
    return command


def _row_notes(r):
    """A recorded note on the run (text in parentheses after its command), and whether it was
    trained on the batches drawn before they came from Philox (its config has no ``data_rng``)."""
    match = re.search(r"\s\((.*)\)\s*$", r.get("run_command") or "")
    notes = [match.group(1)] if match else []
    if r["config"].get("data_rng", "pcg64") == "pcg64":
        notes.append("trained on the former PCG64 batches")
    return notes


def _device(r):
    """The device a run trained on, in words: its GPU's name, or the cores and model of its CPU."""
    if r["config"].get("device", "cpu") == "gpu":
        return r["gpu"]["name"] if r.get("gpu") else "a GPU whose name was not recorded"
    return f"a {r['machine'].get('cores')}-core {r['machine'].get('cpu_model')}"


def _duration(seconds):
    return f"{seconds:.0f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def _epoch_seconds(seconds):
    return f"{seconds:.{1 if seconds >= 1 else 2}f} s"


def _wall_time(runs):
    """The training-time cell of a row of ``runs``: the epochs' summed seconds (each epoch's own,
    so a run resumed in several trainings counts all of them; for several runs their mean and
    sum), the devices they trained on, the median epoch (its range over the runs), the whole
    commands' times where they were recorded, and the runs' notes."""
    walls = [r["train_seconds_all_epochs"] for r in runs]
    cell = (_duration(walls[0]) if len(runs) == 1 else
            f"{_duration(statistics.fmean(walls))} per run, {_duration(sum(walls))} in all")
    cell += " on " + " and ".join(dict.fromkeys(_device(r) for r in runs))
    cell += "".join(dict.fromkeys(_pieces(r) for r in runs))
    medians = [r["seconds_per_epoch_median"] for r in runs if r.get("seconds_per_epoch_median") is not None]
    details = [" to ".join(dict.fromkeys(_epoch_seconds(m) for m in (min(medians), max(medians))))
               + " median epoch" if medians else "no epoch finished"]
    commands = [f"{r['command_wall_seconds']:.0f} s" for r in runs if r.get("command_wall_seconds")]
    if commands:
        details.append(f"the whole command{'s' if len(commands) > 1 else ''} {', '.join(commands)}")
    details += dict.fromkeys(note for r in runs for note in _row_notes(r))
    return f"{cell} ({'; '.join(details)})"


def _pieces(r):
    """How a run trained in several pieces (resumed) was trained, in words: the number of pieces,
    and the seconds on each device when there were several; "" for one piece (or unrecorded)."""
    if (r.get("pieces") or 1) == 1:
        return ""
    by_device = r.get("seconds_by_device") or {}
    if len(by_device) < 2:
        return f", in {r['pieces']} pieces"
    return f", in {r['pieces']} pieces: " + ", ".join(f"{_duration(s)} on the {d}" for d, s in by_device.items())


def _scores(r):
    """A run's test scores: the ``results`` of a record_run JSON, the top level of a bench_mnist one."""
    return r.get("results", r)


def _nll_evaluation(r):
    """The k and the test images of the importance-sampled NLL a run's row shows; (None, every
    test image) where it shows none (a model that classifies shows its test error)."""
    scores, n = _scores(r), SPLIT_SIZES["test"]
    if "test_error" in scores or "test_nll" not in scores:
        return None, n
    return r.get("nll_k") or scores.get("eval_k"), r.get("nll_n_test") or scores.get("n_test", n)


#: The validation scores by which ``--keep-best`` selects an epoch, in words.
SELECTION_WORDS = {"valid_elbo": "validation ELBO", "valid_error": "validation error"}


def _early_stopping(r):
    """Whether early stopping (its config's patience) chose where the finished run ``r`` ended:
    before its last epoch or at it, as its validation scores had it."""
    return bool(r["config"].get("patience")) and r.get("finished", True)


def _replicate_key(r):
    """What runs that differ only in their seed share: every setting but the seed and the run
    folder, the epochs trained (but under early stopping, whose validation scores chose them),
    which scores were recorded, and the k and images of the NLL. The folders of the runs a model
    is built on (M1+M2's M1, recorded in ``run_models``) are left out too: each is named as it was
    where its run started, on whichever machine."""
    settings = {key: value for key, value in r["config"].items() if key not in ("seed", "out")}
    settings["model_options"] = {key: value for key, value in settings.get("model_options", {}).items()
                                 if key not in _run_folder_settings(settings)}
    scored = [key for key in ("test_error", "test_nll", "test_elbo") if key in _scores(r)]
    ended = "early stopping" if _early_stopping(r) else r["epochs"]
    return json.dumps([settings, ended, scored, _nll_evaluation(r)], sort_keys=True)


def _seed(r):
    """A run's seed (a config recorded without one trained with the default's)."""
    return r["config"].get("seed", TrainConfig.seed)


def seed_groups(paths):
    """The run JSONs ``paths`` in rows: runs that differ only in their seed share one, each seed
    once (a second run of a seed, e.g. on another machine, starts another row); the rows in the
    order of their first runs."""
    groups = []  # [(key, seeds, paths)]
    for path in paths:
        r = json.loads(path.read_text())
        key, seed = _replicate_key(r), _seed(r)
        group = next((g for g in groups if g[0] == key and seed not in g[1]), None)
        if group is None:
            groups.append((key, {seed}, [path]))
        else:
            group[1].add(seed)
            group[2].append(path)
    return [group_paths for _, _, group_paths in groups]


def _over_seeds(values, unit=""):
    """One score per seed as a row shows it: their mean, and their standard deviation when
    there are several."""
    text = f"{statistics.fmean(values):.2f}{unit}"
    return text + (f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else "")


def _seeds(runs):
    """How many seeds ``runs`` were trained with, in words: label draws for a semi-supervised
    model, whose labelled images the seed draws (``iwae``, a factory, has no class to ask)."""
    semi_supervised = getattr(MODELS[runs[0]["config"]["model"]], "semi_supervised", False)
    word = "label draw" if semi_supervised else "seed"
    return f"{len(runs)} {word}{'s' if len(runs) > 1 else ''}"


def _effective_sample_sizes(scores):
    """The effective sample sizes of a row's NLL where every run recorded them: the median and
    the minimum (of several runs, the least of each)."""
    if not all("ess_median" in s for s in scores):
        return ""
    least = " (the least over the runs)" if len(scores) > 1 else ""
    return (f", effective sample size{least} median {min(s['ess_median'] for s in scores):.0f}, "
            f"min {min(s['ess_min'] for s in scores):.1f}")


def _ours(runs):
    """The scores cell of a row of ``runs`` (differing only in their seed): the test error, or
    the test NLL and ELBO (or the ELBO alone), as the mean over the seeds ± their standard
    deviation; a single run's NLL ± the standard error of its estimate; and how many seeds."""
    r, scores = runs[0], [_scores(run) for run in runs]
    seeds = _seeds(runs)
    spread = seeds if len(runs) == 1 else f"mean ± standard deviation over {seeds}"
    if "test_error" in scores[0]:
        return f"test error {_over_seeds([100 * s['test_error'] for s in scores], '%')} ({spread})"
    if "test_elbo" not in scores[0]:  # (record_run.py --allow-unfinished)
        return f"not evaluated: stopped after {r['epochs']} of {r['config']['epochs']} epochs ({seeds})"
    elbo = _over_seeds([s["test_elbo"] for s in scores])
    if "test_nll" not in scores[0]:
        return f"test ELBO {elbo} (no importance-sampled NLL; {spread})"
    k, n = _nll_evaluation(r)
    nll = _over_seeds([s["test_nll"] for s in scores])
    stderrs = [_scores(run)["test_nll_stderr"] for run in runs if _scores(run).get("test_nll_stderr")]
    if len(runs) == 1 and stderrs:
        nll, spread = f"{nll} ± {stderrs[0]:.2f}", f"{seeds}, ± the estimate's standard error"
    elif stderrs:
        spread += f"; each estimate's standard error at most {max(stderrs):.2f}"
    return f"test NLL {nll} (k={k}, {n} images{_effective_sample_sizes(scores)}; {spread}); test ELBO {elbo}"


def _epochs(runs):
    """The epochs cell of a row of ``runs``: the epochs trained (each run's where they differ),
    of how many when early stopping ended the runs, and the epochs scored when the final
    evaluation took the one best on the validation split (``--keep-best``)."""
    done = [r["epochs"] for r in runs]
    cell = ", ".join(map(str, done if len(set(done)) > 1 else done[:1]))
    config = runs[0]["config"]
    if _early_stopping(runs[0]):
        cell += f" of {config['epochs']} (early stopping, patience {config['patience']})"
    selected = [_scores(r).get("selected") for r in runs]
    if all(selected):
        epochs = ", ".join(str(s["epoch"]) for s in selected)
        cell += f"; scored: epoch{'s' if len(runs) > 1 else ''} {epochs}, best by {SELECTION_WORDS[selected[0]['by']]}"
    return cell


def _model_row(*paths):
    """One row of the model-family table from the bench_mnist (mnist_*) or record_run (run_*)
    JSONs of runs that differ only in their seed (``seed_groups``)."""
    runs = sorted((json.loads(path.read_text()) for path in paths), key=_seed)
    r = runs[0]
    c = r["config"]
    name = _model_name(c)
    k, n = _nll_evaluation(r)
    commands = "; ".join(f"`{_row_command(run, k, n)}`" for run in runs)
    setting, figure, checked = PAPER.get(name, ("-", "-", "")) if c.get("beta", 1.0) == 1.0 else ("-", "-", "")
    # A run of a paper's recipe (benchmarks/paper_runs.py) records the figure it reproduces.
    paper = r.get("paper") or (f"{figure} ({setting}; {checked})" if checked else "-")
    beta = f", beta {c['beta']:g}" if c.get("beta", 1.0) != 1.0 else ""
    bound_k = _bound_k(c)
    label = (f"{name}, IWAE bound k = {bound_k} (no KL weight)" if bound_k > 1
             else f"{name}{beta}, {_warmup(c)}")
    return f"| {label} | {commands} | {_epochs(runs)} | {_wall_time(runs)} | {_ours(runs)} | {paper} |"


def models_table(results_dir=RESULTS):
    """The model-family results: every trained-run JSON, runs that differ only in their seed in
    one row, with the paper's figure beside it."""
    paths = sorted(results_dir.glob("mnist_*.json")) + sorted(results_dir.glob("run_*.json"))
    lines = ["| model | command | epochs | training time and device | ours | paper |",
             "|---|---|---|---|---|---|"]
    return "\n".join(lines + [_model_row(*group) for group in seed_groups(paths)])


def engine_table(results_dir=RESULTS):
    """Median per-op engine overhead (bench_engine.py) against PyTorch, one line per result file."""
    lines = []
    for path in sorted(results_dir.glob("engine_*.json")):
        r = json.loads(path.read_text())
        s = r["summary"]
        # bench_engine.py measured without PyTorch records minivae's median alone
        versus = (f" vs {s['median_torch_overhead_us']:.1f} us for PyTorch; minivae lower on "
                  f"{s['ops_where_minivae_overhead_below_torch']} of {s['ops']} ops"
                  if "median_torch_overhead_us" in s else " (PyTorch not measured)")
        lines.append(f"`{path.stem}` ({r['machine'].get('cpu_model')}, {r['date'][:10]}, `{r['command']}`): "
                     f"median engine overhead per op (forward + backward, "
                     f"({','.join(map(str, r.get('shape', (4, 4))))}) {r.get('dtype', 'float32')}) "
                     f"{s['median_minivae_overhead_us']:.1f} us for minivae{versus}.")
    return "\n".join(lines)


def _latest_full_kernel_run(results_dir):
    """The newest bench_kernels result on a GPU that ran every implementation (no --impls)."""
    runs = [(r["date"], path) for path in results_dir.glob("kernels_*.json")
            for r in [json.loads(path.read_text())] if r.get("device") and "--impls" not in r["command"]]
    return max(runs)[1] if runs else None


def summary(results_dir=RESULTS):
    """The short results section of the top-level README: trained models, step and epoch speed."""
    parts = []
    if list(results_dir.glob("run_*.json")) or list(results_dir.glob("mnist_*.json")):
        parts += ["The model family next to the papers' figures (each row a real run, or the runs that "
                  "differ only in their seed, which also draws a semi-supervised model's labelled images; "
                  "a run's training time is the sum of its epochs' seconds, over every training that "
                  "resumed it; the CPUs were shared with other jobs, so their times are pessimistic):", "",
                  models_table(results_dir), ""]
    engine = engine_table(results_dir)
    if engine:
        parts += [engine, ""]
    steps = sorted(results_dir.glob("train_step_*.json"))
    if steps:
        parts += ["One training step of the default VAE, float32, the libraries interleaved in one "
                  "process (`benchmarks/bench_train_step.py`; details, memory and the targets in "
                  "[benchmarks/README.md](benchmarks/README.md)):", "",
                  "| run | batch | minivae ms / step | minivae, graph mode | NumPy reference (CuPy on the GPU) "
                  "| PyTorch | PyTorch, whole step in a CUDA graph |",
                  "|---|---|---|---|---|---|---|"]
        for path in steps:
            r = json.loads(path.read_text())
            for b, row in r["results"].items():
                cells = [_step_run_label(path, r), b, _fmt(row.get("minivae", {}).get("ms_per_step"))]
                for lib in ("minivae-graph", "numpy", "torch", "torch-graph"):
                    v = row.get(lib)
                    cells.append("-" if v is None else
                                 f"{_fmt(v['ms_per_step'])} ({_fmt(v['time_ratio_to_minivae'])}x minivae's time)")
                parts.append("| " + " | ".join(cells) + " |")
        parts.append("")
    for path in sorted(results_dir.glob("epoch_*.json")):
        parts += [f"`{path.stem}`: " + epoch_table(json.loads(path.read_text())), ""]
    latest = _latest_full_kernel_run(results_dir)
    if latest:
        parts += ["Our CUDA kernels against unfused CuPy, PyTorch and NumPy (`benchmarks/bench_kernels.py`, "
                  "run by `bash benchmarks/gpu_check.sh` on a lent GPU machine; the newest full run, the "
                  "others and A/B runs in [benchmarks/README.md](benchmarks/README.md)):", "",
                  kernels_section(latest), ""]
    return "\n".join(parts).rstrip() + "\n"


def render(results_dir=RESULTS):
    """All tables, newest file last within each kind."""
    parts = []
    for path in sorted(results_dir.glob("train_step_*.json")):
        parts += [f"#### `{path.name}`", "", train_step_tables(json.loads(path.read_text())), ""]
    for path in sorted(results_dir.glob("epoch_*.json")):
        parts += [f"#### `{path.name}`", "", epoch_table(json.loads(path.read_text())), ""]
    for path in sorted(results_dir.glob("kernels_*.json")):
        section = kernels_section(path)
        if section:
            parts += [f"#### `{path.name}`", "", section, ""]
    return "\n".join(parts).rstrip() + "\n"


def write_readme(text, readme=README, begin=BEGIN, end=END):
    """Replace the text between the generated-section markers of ``readme``."""
    old = readme.read_text()
    head, sep, rest = old.partition(begin)
    if not sep or end not in rest:
        raise SystemExit(f"{readme} has no {begin} ... {end} section")
    tail = rest.split(end, 1)[1]
    readme.write_text(f"{head}{begin}\n{text}{end}{tail}")


def main(argv=None):
    """Print the tables of every result; ``--write`` also replaces the generated section of
    benchmarks/README.md, ``--readme`` the results section of the top-level README.md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="update benchmarks/README.md in place")
    parser.add_argument("--readme", action="store_true",
                        help="update the results section of the top-level README.md in place")
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args(argv)
    text = render(Path(args.results))
    print(text)
    if args.write:
        write_readme("\n" + text + "\n")
        print(f"updated {README}")
    if args.readme:
        write_readme(summary(Path(args.results)), TOP_README, TOP_BEGIN, TOP_END)
        print(f"updated {TOP_README}")


if __name__ == "__main__":
    main()
