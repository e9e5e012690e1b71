"""The docs cannot rot: docs/gradients.md matches the ops' docstrings, the Python blocks of
docs/tutorial.md and docs/gradients.md run and their assertions hold, and every public function
has a docstring."""
import ast
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from minivae import docs
from minivae.gradcheck_cases import op_classes
from test_imports import PACKAGE_DIR, import_graph

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def python_blocks(path):
    """The ```python fenced blocks of a markdown file, in order, with their first line numbers."""
    text = path.read_text()
    return [(text[:m.start()].count("\n") + 2, m.group(1))
            for m in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M)]


def run_blocks(path, tmp_path, monkeypatch):
    """Execute every python block of ``path`` in one namespace (as a reader pasting them would)."""
    monkeypatch.chdir(tmp_path)  # anything a block writes lands in a scratch folder
    namespace = {"__name__": f"docs_{path.stem}"}
    blocks = python_blocks(path)
    assert blocks, f"{path} has no python blocks"
    for line, code in blocks:
        exec(compile(code, f"{path.name}:{line}", "exec"), namespace)


def test_gradients_doc_matches_the_docstrings():
    """Regenerate docs/gradients.md in memory; it must equal the committed file."""
    committed = (DOCS / "gradients.md").read_text()
    assert docs.render_gradients() == committed, \
        "docs/gradients.md is stale: run `python -m minivae.docs` and commit the result"


def test_a_changed_docstring_is_detected(monkeypatch):
    """The comparison above really depends on the docstrings."""
    before = docs.render_gradients()
    op = sorted(op_classes(), key=lambda c: c.__name__)[0]
    monkeypatch.setattr(op, "__doc__", op.__doc__ + "\n\nAn extra sentence.")
    assert docs.render_gradients() != before


@pytest.fixture(scope="module")
def reference():
    return docs.render_reference()


@pytest.mark.parametrize("op", sorted(op_classes(), key=lambda c: c.__name__), ids=lambda c: c.__name__)
def test_every_op_states_forward_and_derivative(op, reference):
    forward, derivative, _ = docs.split_docstring(op.__doc__)
    assert forward, f"{op.__name__}'s docstring has no forward formula"
    assert derivative, f"{op.__name__}'s docstring states no derivative (a paragraph with d/d...)"
    assert f'<a id="op-{op.__name__.lower()}"></a>' in reference


def test_split_docstring():
    doc = """f(x) = log(1 + e^x).

    d/dx = sigmoid(x).
    Stable form: max(x, 0) + log1p(e^-|x|),
    which never overflows.

    A note after.
    """
    forward, derivative, stable = docs.split_docstring(doc)
    assert forward == "f(x) = log(1 + e^x)."
    assert derivative == "d/dx = sigmoid(x).\n\nA note after."
    assert stable == "Stable form: max(x, 0) + log1p(e^-|x|),\nwhich never overflows."
    # The first paragraph is the forward part even where it names a derivative.
    forward, derivative, _ = docs.split_docstring("y = x^2, whose d/dx is below.\n\nd/dx = 2 x.")
    assert (forward, derivative) == ("y = x^2, whose d/dx is below.", "d/dx = 2 x.")


def test_a_docstring_without_a_derivative_has_none():
    """Paragraphs after the first that state no derivative are not taken for one: the derivative
    part is "", which test_every_op_states_forward_and_derivative refuses."""
    forward, derivative, stable = docs.split_docstring("f(x) = x^3.\n\nUsed by the encoder.")
    assert (forward, derivative, stable) == ("f(x) = x^3.\n\nUsed by the encoder.", "", "")


def test_a_paragraph_starting_with_derivative_states_the_derivative():
    forward, derivative, _ = docs.split_docstring("f(x) = |x|^3.\n\nDerivative: 3 x |x|.")
    assert (forward, derivative) == ("f(x) = |x|^3.", "Derivative: 3 x |x|.")


def test_the_generated_page_ends_with_one_newline():
    template = f"# title\n\n{docs.INDEX_MARKER}\n\n{docs.REFERENCE_MARKER}\n\n\n\n"
    text = docs.render_gradients(template)
    assert text.startswith(docs.HEADER + "# title\n") and text.endswith("\n") and not text.endswith("\n\n")


def test_template_needs_both_markers_once_each():
    with pytest.raises(ValueError, match="op-reference"):
        docs.render_gradients("# title\n\n" + docs.INDEX_MARKER + "\n")
    with pytest.raises(ValueError, match="op-index --> exactly once"):
        docs.render_gradients(f"# title\n\n{docs.INDEX_MARKER}\n\n{docs.REFERENCE_MARKER}\n\n{docs.INDEX_MARKER}\n")


def test_docs_command_writes_and_checks(tmp_path, monkeypatch, capsys):
    """--check compares gradients.md and writes nothing, the tutorial's outputs included."""
    out, tutorial = tmp_path / "gradients.md", tmp_path / "tutorial.md"
    stale = "```python\nprint(1 + 1)\n```\n\n```text\n3\n```\n"
    tutorial.write_text(stale)
    monkeypatch.setattr(docs, "OUTPUT", out)
    monkeypatch.setattr(docs, "TUTORIAL", tutorial)
    monkeypatch.chdir(tmp_path)
    assert docs.main(["--check"]) == 1                       # missing
    assert tutorial.read_text() == stale
    assert docs.main([]) == 0 and out.read_text() == docs.render_gradients()
    assert tutorial.read_text() == stale.replace("3", "2")
    assert docs.main(["--check"]) == 0
    out.write_text(out.read_text() + "edited by hand\n")
    assert docs.main(["--check"]) == 1
    assert "out of date" in capsys.readouterr().err


def test_tutorial_runs_and_shows_what_it_prints(tmp_path, monkeypatch):
    """Every block of docs/tutorial.md runs, and the output shown under it is what it prints
    (`python -m minivae.docs` rewrites the shown outputs)."""
    monkeypatch.chdir(tmp_path)
    committed = (DOCS / "tutorial.md").read_text()
    blocks = list(docs.TUTORIAL_BLOCK.finditer(committed))
    assert len(blocks) >= 10 and all(b.group("output") for b in blocks), "a tutorial block shows no output"
    assert docs.render_tutorial(committed) == committed, \
        "docs/tutorial.md shows stale outputs: run `python -m minivae.docs` and commit the result"


def test_a_stale_tutorial_output_is_detected(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = "Intro.\n\n```python\nprint(1 + 1)\n```\n\n```text\n3\n```\n\nEnd.\n"
    assert docs.render_tutorial(text) == text.replace("```text\n3\n", "```text\n2\n")


def test_a_tutorial_block_that_prints_nothing_shows_no_output(tmp_path, monkeypatch):
    """No empty text block is added under a block that prints nothing; a stale one is dropped."""
    monkeypatch.chdir(tmp_path)
    quiet = "```python\nx = 2\n```\n"
    assert docs.render_tutorial(quiet) == quiet
    assert docs.render_tutorial(quiet + "\n```text\n2\n```\n") == quiet


def test_an_error_in_a_tutorial_block_names_the_line_of_the_file(tmp_path, monkeypatch):
    """A block that raises is compiled as "NAME:LINE", LINE the file's line of the block's first
    line of code, so the traceback's line within the block leads to the line in the file."""
    monkeypatch.chdir(tmp_path)
    text = "Intro.\n\n```python\nx = 1\ny = x / 0\n```\n"
    with pytest.raises(ZeroDivisionError) as info:
        docs.render_tutorial(text, name="t.md")
    tb = info.tb
    while tb.tb_next is not None:
        tb = tb.tb_next
    assert (tb.tb_frame.f_code.co_filename, tb.tb_lineno) == ("t.md:4", 2)  # "x = 1" is line 4 of t.md


def test_gradients_worked_examples_run(tmp_path, monkeypatch):
    run_blocks(DOCS / "gradients.md", tmp_path, monkeypatch)


# The structure of a graph picture: its node labels (without the gradient norms, which depend
# on the images) and its number of edges, read from DOT text or from the SVG Graphviz made of it.
def _structure(labels, edges):
    return sorted(tuple(line for line in label if not line.startswith("|grad|")) for label in labels), edges


def dot_structure(dot):
    labels = [m.group(1).split("\\n") for m in re.finditer(r'^\s*n\d+ \[label="(.*?)"', dot, flags=re.M)]
    return _structure(labels, len(re.findall(r"^\s*n\d+ -> n\d+", dot, flags=re.M)))


def svg_structure(svg):
    ns = {"svg": "http://www.w3.org/2000/svg"}
    groups = ET.fromstring(svg).findall(".//svg:g", ns)
    labels = [[t.text for t in g.findall("svg:text", ns)] for g in groups if g.get("class") == "node"]
    return _structure(labels, sum(g.get("class") == "edge" for g in groups))


def test_docs_command_outside_a_checkout_is_one_line(tmp_path, monkeypatch, capsys):
    # Before: a FileNotFoundError traceback for site-packages/docs/gradients.template.md, and
    # with --graph only after the graph had been traced on MNIST.
    installed = tmp_path / "site-packages"  # an installed minivae has no docs/ beside it
    for name in ("TEMPLATE", "OUTPUT", "TUTORIAL", "GRAPH_SVG"):
        monkeypatch.setattr(docs, name, installed / "docs" / getattr(docs, name).name)
    monkeypatch.setattr(docs, "write_vae_graph", lambda: pytest.fail("the graph was made before the check"))
    for argv in (["--check"], [], ["--graph"]):
        with pytest.raises(SystemExit) as exit_:
            docs.main(argv)
        assert exit_.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1].endswith(
            f"error: {installed / 'docs' / 'gradients.template.md'} not found: python -m minivae.docs "
            "works in a source checkout of minivae (docs/ beside minivae/), not on an installed package")
    assert not installed.exists()


def test_rendering_the_graph_without_graphviz_is_one_line(monkeypatch, capsys):
    # Before: a traceback from render_svg, after the graph had been traced on MNIST.
    import minivae.graph

    monkeypatch.setattr(minivae.graph, "svg_available", lambda: False)
    monkeypatch.setattr(docs, "write_vae_graph", lambda: pytest.fail("the graph was made before the check"))
    with pytest.raises(SystemExit) as exit_:
        docs.main(["--graph"])
    assert exit_.value.code == 2
    assert "--graph needs Graphviz's `dot` program on the PATH" in capsys.readouterr().err.splitlines()[-1]


def test_check_with_graph_is_refused(monkeypatch, capsys):
    # Before: --check compared gradients.md and silently made no graph.
    monkeypatch.setattr(docs, "write_vae_graph", lambda: pytest.fail("the graph was made"))
    monkeypatch.setattr(docs, "render_gradients", lambda: pytest.fail("gradients.md was compared"))
    with pytest.raises(SystemExit) as exit_:
        docs.main(["--check", "--graph"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        "error: --check and --graph exclude each other: --check only compares docs/gradients.md, "
        "--graph writes docs/vae_graph.svg; give one of the two")


def test_vae_graph_svg_is_todays_graph():
    """docs/vae_graph.svg shows today's graph of the default VAE's loss: the same nodes (op or
    parameter, shape, dtype; the gradient norms depend on the images) and as many edges.
    Regenerate it with `python -m minivae.docs --graph`."""
    x = (np.random.default_rng(0).uniform(size=(16, 784)) < 0.5).astype(np.float32)
    today = dot_structure(docs.vae_graph_dot(x))
    assert len(today[0]) > 20 and today[1] > 20
    assert svg_structure((DOCS / "vae_graph.svg").read_text()) == today, \
        "docs/vae_graph.svg is stale: run `python -m minivae.docs --graph` and commit the result"


def test_graph_structure_sees_a_changed_graph():
    """The comparison above tells graphs apart (here: two ELBO samples add nodes)."""
    from minivae.graph import model_loss_graph
    from minivae.models import VAE
    from minivae.random import Generator

    x = (np.random.default_rng(0).uniform(size=(16, 784)) < 0.5).astype(np.float32)
    _, other = model_loss_graph(VAE(mc_samples=2), x, Generator(seed=0), grad=True)
    assert dot_structure(other) != dot_structure(docs.vae_graph_dot(x))


@pytest.mark.skipif(shutil.which("dot") is None, reason="needs Graphviz's dot")
def test_svg_and_dot_structures_agree():
    """svg_structure reads back what dot_structure reads from the DOT it was rendered from."""
    from minivae.graph import render_svg

    x = (np.random.default_rng(1).uniform(size=(4, 784)) < 0.5).astype(np.float32)
    dot = docs.vae_graph_dot(x)
    assert svg_structure(render_svg(dot)) == dot_structure(dot)


def test_pictures_are_in_docs():
    for name in ("vae_graph.svg", "grad_norms.png"):
        path = DOCS / name
        assert path.exists() and path.stat().st_size > 1000, f"docs/{name} is missing"
    assert (DOCS / "vae_graph.svg").read_text().lstrip().startswith(("<?xml", "<svg"))


# ----- the layers of docs/architecture.md ---------------------------------------------------------
#: Packages that only re-export or load lazily, named in the text rather than in the table.
UNLAYERED = {"minivae", "minivae.gpu"}


def documented_layers(text):
    """{module or folder (``minivae.ops.*``): its layer} from the modules column of the layer
    table of docs/architecture.md (``backend.py``, ``gpu/_source.py``, ``ops/*.py``, ``nn/``)."""
    layers = {}
    for number, modules in re.findall(r"^\| (\d+)\.[^|]*\| ([^|]*) \|", text, flags=re.M):
        for path in re.findall(r"`([\w/*]+(?:\.py|/))`", modules):
            name = "minivae." + path.removesuffix(".py").removesuffix("/").replace("/", ".")
            layers[name.removesuffix(".__init__")] = int(number)
    return layers


def layer_of(module, layers):
    """The layer of ``module``: its own row, else that of the innermost folder that holds it."""
    if module in layers:
        return layers[module]
    folders = [f for f in layers if module.startswith(f.removesuffix("*").rstrip(".") + ".")
               or f.endswith(".*") and module == f[:-2]]
    return layers[max(folders, key=len)] if folders else None


def test_architecture_layers_follow_the_import_graph():
    """Every module sits in a row of docs/architecture.md's layer table and imports (deferred
    imports included, as tests/test_imports.py reads them) only from its own layer or below."""
    layers = documented_layers((DOCS / "architecture.md").read_text())
    graph = import_graph(PACKAGE_DIR)
    assert not {m for m in graph if layer_of(m, layers) is None} - UNLAYERED
    upward = [f"{a} (layer {layer_of(a, layers)}) imports {b} (layer {layer_of(b, layers)})"
              for a in sorted(graph) if a not in UNLAYERED for b in sorted(graph[a])
              if b not in UNLAYERED and layer_of(b, layers) > layer_of(a, layers)]
    assert not upward, "docs/architecture.md puts a module below one it imports:\n" + "\n".join(upward)


# ----- a docstring on every public function -------------------------------------------------------
# Read from the source with ast, nothing imported: the GPU and benchmark modules count too, on a
# machine without CuPy or PyTorch.
SCANNED = ("minivae", "benchmarks", "tools")
EXEMPT_METHODS = ("forward", "backward")


def _parsed_sources(root=ROOT):
    """{path relative to ``root``: its ast} of every .py file under the SCANNED folders."""
    return {path.relative_to(root).as_posix(): ast.parse(path.read_text(), str(path))
            for folder in SCANNED for path in sorted((root / folder).rglob("*.py"))}


def _defs(node, owner=""):
    """(owner, node) of every class and def in ``node`` that is not inside a function (defs under
    an ``if`` or ``try`` count), ``owner`` being the dotted names of the classes around it."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield owner, child
        elif isinstance(child, ast.ClassDef):
            yield owner, child
            yield from _defs(child, f"{owner}.{child.name}".lstrip("."))
        else:
            yield from _defs(child, owner)


def function_subclasses(sources):
    """Names of the classes that subclass Function, directly or through others, following the
    bases by name. A base named like a class of its own file is that class: nn.layers.LinearReLU
    subclasses the layer Linear of its file, not the op Linear of ops/linalg.py."""
    classes = {(path, node.name): [b.id if isinstance(b, ast.Name) else b.attr for b in node.bases
                                   if isinstance(b, (ast.Name, ast.Attribute))]
               for path, tree in sources.items() for _, node in _defs(tree) if isinstance(node, ast.ClassDef)}

    def resolve(path, name):
        if (path, name) in classes:
            return [(path, name)]
        return [key for key in classes if key[1] == name]

    found = {key for key in classes if key[1] == "Function"}
    roots = set(found)
    grew = True
    while grew:
        grew = False
        for key, bases in classes.items():
            if key not in found and any(b in found for name in bases for b in resolve(key[0], name)
                                        if b != key):
                found.add(key)
                grew = True
    return {name for _, name in found - roots}


def public_functions_without_docstrings(sources):
    """``path:line Class.name`` of every public function or method (its name does not start with
    "_"; the methods of private classes count) that has no docstring, except the ops' forward and
    backward."""
    ops = function_subclasses(sources)
    missing = []
    for path, tree in sources.items():
        for owner, node in _defs(tree):
            if isinstance(node, ast.ClassDef) or node.name.startswith("_") or ast.get_docstring(node):
                continue
            if node.name in EXEMPT_METHODS and owner.rpartition(".")[2] in ops:
                continue
            missing.append(f"{path}:{node.lineno} {owner + '.' if owner else ''}{node.name}")
    return missing


def test_every_public_function_has_a_docstring():
    """The project's rule: a docstring on every public function and method of minivae/,
    benchmarks/ and tools/. Exempt: ``forward`` and ``backward`` of the ops (the subclasses of
    Function). An op's class docstring states its forward formula and its derivative (checked by
    test_every_op_states_forward_and_derivative and rendered into docs/gradients.md), and
    Function.forward/backward document the interface, so a docstring on each op's two
    static methods would only repeat one of them."""
    sources = _parsed_sources()
    assert len(sources) > 20, f"found only {sorted(sources)} under {ROOT}"
    missing = public_functions_without_docstrings(sources)
    assert not missing, f"{len(missing)} public functions without a docstring:\n" + "\n".join(missing)


def test_docstring_exemption_is_the_ops():
    """The classes whose forward/backward are exempt above are exactly the op classes (a class
    named like an op elsewhere, a layer say, gets no exemption)."""
    assert function_subclasses(_parsed_sources()) == {op.__name__ for op in op_classes()}
