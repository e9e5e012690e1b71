"""The README's code runs as written: the Python example runs (on small made-up data here), and
every ``minivae`` command in it is accepted by the command line's own parser."""
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

import minivae.data
from minivae.cli import _config_from_args, build_parser
from minivae.runs import TrainConfig
from test_train import small_data

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_python_api_example_is_near_the_top_and_ten_lines():
    head, _, _ = README.partition("## Quick start")
    code = re.search(r"^## Python API in 10 lines\n.*?^```python\n(.*?)^```", head, flags=re.S | re.M).group(1)
    statements = [line for line in code.splitlines() if line.strip() and not line.startswith(("import", "from"))]
    assert len(statements) <= 10


def test_python_api_example_runs(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(minivae.data, "load_mnist", lambda *a, **k: small_data(n_train=200, n_eval=40))
    code = re.search(r"^```python\n(.*?)^```", README, flags=re.S | re.M).group(1)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    assert re.fullmatch(r"test log p\(x\) after one epoch: -\d+\.\d nats\n", printed.getvalue())


def commands():
    """Every ``minivae ...`` command of the README's code blocks and of its inline code that names
    no placeholder (NAME, [...])."""
    lines = [line[4:] for line in README.splitlines() if line.startswith("    ") and "minivae" in line]
    lines += [span for span in re.findall(r"`([^`]*minivae [^`]*)`", README)
              if "NAME" not in span and "[" not in span]
    found = []
    for line in lines:
        for part in line.split("&&"):
            words = shlex.split(part, comments=True)
            for i, word in enumerate(words):
                after = words[i - 1] if i else ""
                if word.endswith("bin/minivae") or word == "minivae" and (i == 0 or after == "-m" or "=" in after):
                    if words[i + 1:] != ["..."]:
                        found.append(words[i + 1:])
                    break
    return found


def test_readme_has_commands():
    assert len(commands()) >= 20


@pytest.mark.parametrize("words", commands(), ids=lambda w: " ".join(w)[:60])
def test_readme_command_is_valid(words):
    """Parsed as the CLI parses it (``--set`` values checked against the model's types too; a
    resumed run's own settings are the defaults' here)."""
    if words == ["--version"]:
        with pytest.raises(SystemExit, match="0"):
            build_parser().parse_args(words)
        return
    args = build_parser().parse_args(words)
    if args.command == "train":
        _config_from_args(args, args.out or TrainConfig().out, TrainConfig())


ROOT = Path(__file__).resolve().parents[1]
#: Words that point at documents or history outside the repository.
OUTSIDE = re.compile(r"\bsessions?\b|DESIGN\.md|GPU-NOTES|\bthe issue\b|\bissues? #?\d+|design notes", re.I)


def project_files():
    """The repository's code and documentation (not the recorded results, which are records)."""
    skip = {".git", ".venv", ".venv-nvrtc", "venv", "__pycache__", "runs", "build", "results"}
    for path in sorted(ROOT.rglob("*")):
        if (path.suffix in (".py", ".md", ".sh", ".toml", ".cu", ".cuh", ".cfg", ".yml", ".yaml", ".txt")
                and not skip & set(path.relative_to(ROOT).parts) and path != Path(__file__).resolve()):
            yield path


def test_project_files_speak_of_the_project_only():
    hits = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}" for path in project_files()
            for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1) if OUTSIDE.search(line)]
    assert len(list(project_files())) > 50
    assert not hits, "references to documents or history outside the repository:\n" + "\n".join(hits)


def test_license_is_mit_as_pyproject_says():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 the minivae authors" in text
    assert 'license = "MIT"' in (ROOT / "pyproject.toml").read_text()


def test_the_number_of_ops_is_the_number_of_functions_in_ops():
    """The layout table's "N ops" counts the Function classes of ``minivae.ops``: an op added
    without the README's count changed fails here."""
    from minivae.gradcheck_cases import op_classes

    counts = re.findall(r"\| (\d+) ops, one `Function` each", README)
    assert counts == [str(len(op_classes()))]
