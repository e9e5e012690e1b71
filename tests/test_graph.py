"""minivae.graph: the traced graph, the gradients of intermediate nodes, and the DOT export
(parsed back line by line), including the ``minivae graph`` command."""
import dataclasses
import re

import numpy as np
import pytest

import minivae as mv
from minivae import checkpoint
from minivae import functional as F
from minivae.cli import main
from minivae.graph import model_loss_graph, node_gradients, parameter_names, to_dot, trace_graph
from minivae.models import VAE
from minivae.ops.elementwise import Exp
from minivae.random import Generator
from minivae.runs import CHECKPOINT, TrainConfig

NODE = re.compile(r'^  (n\d+) \[label="((?:[^"\\]|\\.)*)", shape=(\w+), fillcolor="(#[0-9a-f]{6})"(, penwidth=2)?\];$')
EDGE = re.compile(r"^  (n\d+) -> (n\d+);$")
HEADER = re.compile(r"^  (rankdir=\w+|node \[.*\]|edge \[.*\]|label=\".*\"|labelloc=t);$")


def parse_dot(text):
    """A strict reader of our DOT output: ({node id: label lines}, [(src, dst)], root id).

    Every line must be the opening, the closing brace, a header line, a node or an edge.
    """
    lines = text.rstrip("\n").split("\n")
    assert lines[0] == "digraph minivae {" and lines[-1] == "}"
    nodes, edges, roots = {}, [], []
    for line in lines[1:-1]:
        if HEADER.match(line):
            continue
        m = NODE.match(line)
        if m:
            assert m.group(1) not in nodes, f"node {m.group(1)} defined twice"
            nodes[m.group(1)] = m.group(2).split("\\n")
            if m.group(5):
                roots.append(m.group(1))
            continue
        m = EDGE.match(line)
        assert m, f"unexpected DOT line: {line!r}"
        edges.append((m.group(1), m.group(2)))
    assert len(roots) == 1
    return nodes, edges, roots[0]


def check_dag(nodes, edges, root):
    """Edges join defined nodes, there is no cycle, and only the root feeds nothing."""
    assert all(s in nodes and d in nodes for s, d in edges)
    feeds = {s for s, _ in edges}
    assert set(nodes) - feeds == {root}
    indegree = {n: 0 for n in nodes}
    for _, d in edges:
        indegree[d] += 1
    ready = [n for n, k in indegree.items() if k == 0]
    seen = 0
    while ready:
        n = ready.pop()
        seen += 1
        for s, d in edges:
            if s == n:
                indegree[d] -= 1
                if indegree[d] == 0:
                    ready.append(d)
    assert seen == len(nodes), "the graph has a cycle"


def test_small_expression_graph_and_dot():
    a = mv.tensor(np.array([1.0, 2.0]), requires_grad=True)
    c = mv.tensor(np.array([3.0, 4.0]))
    out = (F.exp(a) * c + a).sum()
    graph = trace_graph(out, names={id(a): "a", id(c): "c"})
    assert [n.op for n in graph.nodes if n.kind == "op"] == ["Exp", "Mul", "Add", "Sum"]
    assert {n.name: n.kind for n in graph.nodes if n.kind != "op"} == {"a": "param", "c": "input"}
    nodes, edges, root = parse_dot(to_dot(graph, title='a "quoted" title'))
    check_dag(nodes, edges, root)
    assert len(nodes) == 6 and len(edges) == 6           # a, c, exp, mul, add, sum; a is used twice
    labels = {n: lines[0] for n, lines in nodes.items()}
    assert nodes[root] == ["Sum", "() float64"]
    by_label = {v: k for k, v in labels.items()}
    assert (by_label["a"], by_label["Exp"]) in edges and (by_label["a"], by_label["Add"]) in edges
    assert nodes[by_label["Exp"]][1] == "(2,) float64"


@pytest.mark.parametrize("make_names, message", [
    (lambda a: ["a"], "names must be a dict id(tensor) -> name, got list"),
    (lambda a: "a", "names must be a dict id(tensor) -> name, got str"),
    (lambda a: {a: "a"}, "names must map id(tensor) to a name, e.g. {id(x): 'x'}; got Tensor -> str"),
    (lambda a: {id(a): 3}, "names must map id(tensor) to a name, e.g. {id(x): 'x'}; got int -> int"),
], ids=["list", "string", "keyed by the tensor", "a number as the name"])
def test_trace_graph_refuses_names_that_name_nothing(make_names, message):
    # Before: {a: "a"} matched no node (the keys are ids) and named nothing, silently; a list
    # met dict()'s "dictionary update sequence element #0 has length 1".
    a = mv.tensor(np.array([1.0, 2.0]), requires_grad=True)
    with pytest.raises(TypeError, match=f"^trace_graph: {re.escape(message)}$"):
        trace_graph((a * a).sum(), names=make_names(a))


def test_a_backslash_in_a_title_or_name_is_shown_as_it_is():
    r"""DOT reads \n, \l and \r in a label as line breaks: a backslash of the text is escaped
    first, so a title or name such as runs\new or x\l stays one line, as given."""
    a = mv.tensor(np.array([1.0, 2.0]), requires_grad=True)
    dot = to_dot(trace_graph((a * a).sum(), names={id(a): "x\\l"}), title="runs\\new")
    assert '  label="runs\\\\new";' in dot.split("\n")
    assert 'label="x\\\\l\\n(2,) float64"' in dot


@pytest.mark.parametrize("rankdir", ["LR", "TB", "RL", "BT"])
def test_to_dot_takes_graphviz_directions_and_refuses_others(rankdir):
    graph = trace_graph((mv.tensor(np.ones(2), requires_grad=True) * 2).sum())
    assert f"  rankdir={rankdir};" in to_dot(graph, rankdir=rankdir).split("\n")
    # Before: any text was written into the DOT file, and Graphviz fell back to its default.
    with pytest.raises(ValueError, match=f"^to_dot: rankdir must be one of TB, BT, LR, RL, got '{rankdir.lower()}'$"):
        to_dot(graph, rankdir=rankdir.lower())


def test_gradients_of_intermediate_nodes():
    a = mv.tensor(np.array([1.0, -2.0, 0.5]), requires_grad=True)
    e = F.exp(a)
    out = (e * a).sum() + (a * a).sum()                   # a reaches the loss along three paths
    grads = node_gradients(out)
    np.testing.assert_allclose(grads[id(e)], a.data)      # d out / d exp(a) = a
    np.testing.assert_allclose(grads[id(a)], np.exp(a.data) * (1 + a.data) + 2 * a.data)
    assert grads[id(out)] == 1.0
    assert a.grad is None                                  # .grad untouched
    assert Exp.backward.__qualname__ == "Exp.backward"     # no class was patched
    assert e._hooks == [] and out._hooks == []             # its recording hooks are removed
    out.backward()                                         # the graph is still usable
    np.testing.assert_allclose(a.grad, grads[id(a)])


def test_trace_with_grad_labels_norms_and_keeps_existing_grads():
    W = mv.tensor(np.random.default_rng(0).standard_normal((3, 2)), requires_grad=True)
    W.grad = np.full((3, 2), 7.0)
    x = mv.tensor(np.ones((4, 3)))
    h = F.tanh(x @ W)
    loss = (h * h).mean()
    graph = trace_graph(loss, names={id(W): "W"}, grad=True)
    np.testing.assert_array_equal(W.grad, 7.0)
    W.grad = None
    loss.backward()
    node = next(n for n in graph.nodes if n.name == "W")
    assert node.grad_norm == pytest.approx(np.linalg.norm(W.grad))
    tanh_node = next(n for n in graph.nodes if n.op == "Tanh")
    assert tanh_node.grad_norm == pytest.approx(np.linalg.norm(2 * h.data / h.size))
    assert next(n for n in graph.nodes if n.kind == "const").grad_norm is None
    nodes, _, _ = parse_dot(to_dot(graph))
    assert any(lines[-1].startswith("|grad| ") for lines in nodes.values())


def test_freed_graph_is_refused_for_gradients():
    a = mv.tensor(np.array([1.0, 2.0]), requires_grad=True)
    out = F.exp(a).sum()
    out.backward()
    with pytest.raises(RuntimeError, match="already freed"):
        node_gradients(out)
    with pytest.raises(RuntimeError, match="already freed"):
        trace_graph(out)


@pytest.mark.parametrize("make_root, message", [
    (lambda a: F.exp(a), r"root has shape \(2,\); the gradients are those of a one-element root"),
    (lambda a: F.exp(a.detach()).sum(), "root does not require grad"),
], ids=["non-scalar root", "root without grad"])
def test_gradients_need_a_one_element_root_that_requires_grad(make_root, message):
    a = mv.tensor(np.array([1.0, 2.0]), requires_grad=True)
    with pytest.raises(ValueError, match=message):
        trace_graph(make_root(a), grad=True)
    assert trace_graph(make_root(a)).nodes                # without gradients it is a graph


def test_vae_loss_graph():
    model = VAE(x_dim=12, z_dim=3, hidden=(8,), rng=np.random.default_rng(0))
    x = (np.random.default_rng(1).uniform(size=(5, 12)) < 0.5).astype(np.float32)
    graph, dot = model_loss_graph(model, x, Generator(seed=0), grad=True)
    nodes, edges, root = parse_dot(dot)
    check_dag(nodes, edges, root)
    titles = [lines[0] for lines in nodes.values()]
    for name in parameter_names(model).values():
        assert titles.count(name) == 1
    for op in ("Linear", "LinearRelu", "ReparameterizeKL", "BernoulliLogProb"):
        assert op in titles
    assert "x" in titles and all(lines[1].endswith("float32") for lines in nodes.values())
    # the parameters' gradient norms are those of an ordinary backward
    loss, _ = model.loss(mv.tensor(x), Generator(seed=0))
    loss.backward()
    norms = {n.name: n.grad_norm for n in graph.nodes if n.kind == "param"}
    for name, p in model.named_parameters():
        assert norms[name] == pytest.approx(float(np.linalg.norm(p.grad.astype(np.float64))), rel=1e-5)


def test_graph_command_for_a_model(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("minivae.graph.svg_available", lambda: False)
    out = tmp_path / "vae.dot"
    assert main(["graph", "--model", "vae", "--data", "random", "--batch-size", "4", "--grad",
                 "--out", str(out)]) == 0
    assert capsys.readouterr().out.split() == [str(out)]
    nodes, edges, root = parse_dot(out.read_text())
    check_dag(nodes, edges, root)
    assert ["x", "(4, 784) float32"] in nodes.values()
    assert sum(1 for lines in nodes.values() if lines[0].startswith("encoder.")) == 4
    # SVG was asked for but Graphviz is "missing": a clear error, no file
    assert main(["graph", "--model", "vae", "--data", "random", "--out", str(tmp_path / "g.svg")]) == 2
    assert not (tmp_path / "g.svg").exists()


def test_the_graph_command_draws_noise_as_training_does(tmp_path, monkeypatch):
    """A Generator on the training stream, not one fixed Noise address: a model that draws more
    than once per loss (ADGM's a and z) gets other numbers for each draw, as in training."""
    import minivae.graph
    from minivae import streams
    from minivae.random import Generator

    monkeypatch.setattr("minivae.graph.svg_available", lambda: False)
    seen, real = [], minivae.graph.model_loss_graph
    monkeypatch.setattr(minivae.graph, "model_loss_graph",
                        lambda model, x, noise, **kw: seen.append(noise) or real(model, x, noise, **kw))
    assert main(["graph", "--model", "adgm", "--data", "random", "--batch-size", "2", "--seed", "5",
                 "--out", str(tmp_path / "g.dot")]) == 0
    assert isinstance(seen[0], Generator)
    assert seen[0].state_dict()["seed"] == 5 and seen[0].state_dict()["stream"] == streams.TRAIN_NOISE


def test_graph_command_for_a_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("minivae.graph.svg_available", lambda: False)
    config = TrainConfig(z_dim=2, hidden=(8,), out=str(tmp_path))
    model = VAE(**config.model_kwargs(), rng=np.random.default_rng(0))
    checkpoint.save(tmp_path / CHECKPOINT, {f"model/{k}": v for k, v in model.state_dict().items()},
                    {"config": dataclasses.asdict(config)})
    assert main(["graph", str(tmp_path), "--data", "random"]) == 0
    nodes, edges, root = parse_dot((tmp_path / "graph.dot").read_text())
    check_dag(nodes, edges, root)
    assert ["q_z.mu.weight", "(8, 2) float32"] in nodes.values()
    assert main(["graph"]) == 2 and "one of the two" in capsys.readouterr().err


@pytest.mark.skipif(not __import__("shutil").which("dot"), reason="Graphviz's dot is not installed")
def test_svg_rendering(tmp_path):
    from minivae.graph import render_svg

    a = mv.tensor(np.array([1.0, 2.0]), requires_grad=True)
    svg = render_svg(to_dot(trace_graph(F.exp(a).sum())))
    assert "<svg" in svg and "Exp" in svg
