"""The computation graph of one evaluation, as data and as Graphviz DOT (optionally with gradients).

While a graph is alive every Tensor made by an op holds ``_node``, the op's ``Node`` (see
``minivae.function``). ``trace_graph(root)`` walks those links from ``root`` (an explicit
stack, no recursion) and returns a ``Graph``: one node per tensor, each labelled with the op that
made it (or its name, for a leaf), its shape and its dtype, and one edge per use of a tensor as an
input. Constant inputs (the data, constants) are nodes too, so the picture shows every array an op
consumed; reparameterization noise is drawn inside its op (from a generator's address), so it is
no node.

``node_gradients(root)`` runs one backward pass and returns the gradient of ``root`` with respect
to every tensor of the graph, intermediate ones included. The engine stores gradients only on
leaves, so a temporary gradient hook (``Tensor.register_hook``) on each intermediate tensor
records its complete gradient; the hooks are removed afterwards, and the leaves' ``.grad`` are
left as they were.

``to_dot(graph)`` writes DOT text; ``render_svg`` turns it into SVG with the ``graphviz`` Python
package, or the ``dot`` program when only that is installed.

Example::

    loss, _ = model.loss(x, noise)
    graph = trace_graph(loss, names=parameter_names(model), grad=True)
    Path("vae.dot").write_text(to_dot(graph, title="VAE loss"))
"""
import dataclasses
import shutil
import subprocess
from collections.abc import Mapping

import numpy as np

from .autograd import Tensor, _topological_order
from .backend import to_device

#: Graphviz's layout directions: top to bottom, bottom to top, left to right, right to left.
RANKDIRS = ("TB", "BT", "LR", "RL")
#: Fill colours of the node kinds (op outputs, parameters / named leaves, constants, the root).
COLORS = {"op": "#dbe9f6", "param": "#d5efd5", "input": "#fff2b3", "const": "#eeeeee", "root": "#f9d9b8"}


@dataclasses.dataclass
class Node:
    """One tensor of the graph.

    ``kind`` is "op" (made by a Function; ``op`` is its class name), "param" (a leaf that requires
    a gradient), "input" (a named leaf without gradient, e.g. the data), "const" (an unnamed leaf
    without gradient: noise, a Python number; one-element constants show their value); ``root`` marks
    the tensor the graph was traced from. ``grad_norm`` is filled by ``trace_graph(grad=True)``
    (None where no gradient reaches the tensor).
    """
    id: str
    kind: str
    op: str
    shape: tuple
    dtype: str
    name: str = None
    root: bool = False
    grad_norm: float = None

    def label(self):
        """The text shown in the node: op or name, then shape and dtype, then |grad| when known."""
        title = self.op if self.kind == "op" else (self.name or self.kind)
        if self.kind == "op" and self.name:
            title = f"{self.name} = {self.op}"
        lines = [title, f"{self.shape} {self.dtype}"]
        if self.grad_norm is not None:
            lines.append(f"|grad| {self.grad_norm:.3g}")
        return "\n".join(lines)


@dataclasses.dataclass
class Graph:
    """Nodes (inputs before the tensors made from them) and edges ``(source id, target id)``
    meaning "source is an input of the op that made target"; ``tensors`` maps node ids to the
    Tensor objects (kept alive while the Graph is)."""
    nodes: list
    edges: list
    tensors: dict

    def node(self, node_id):
        """The Node with this id."""
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)


def parameter_names(model):
    """``{id(parameter): dotted name}`` of a Module's parameters, for ``trace_graph(names=...)``."""
    return {id(p): name for name, p in model.named_parameters()}


def _walk(root):
    """Every tensor reachable from ``root``, constants included, inputs before their users."""
    tensors, seen = [], set()
    for node in reversed(_topological_order([root])):
        outputs = [out() for out in node.outputs]
        for t in list(node.inputs) + [t for t in outputs if t is not None]:
            if t not in seen:
                seen.add(t)
                tensors.append(t)
    return tensors or [root]


def _norm(array):
    """The Euclidean norm of a backend array as a Python float (computed in float64)."""
    a = np.asarray(to_device(array, "cpu"), dtype=np.float64)
    return float(np.sqrt(np.sum(a * a)))


def node_gradients(root, grad=None):
    """The gradient of ``root`` with respect to each tensor of its graph: ``{id(tensor): array}``.

    Runs ``root.backward(grad, retain_graph=True)`` once (so the graph stays usable) and returns
    the arrays without touching any tensor's ``.grad``. Tensors that no gradient reaches (constants,
    branches cut by an op) are absent.
    """
    tensors = _walk(root)
    ops = [t for t in tensors if t._node is not None]
    if any(t._node.ctx is None for t in ops):
        raise RuntimeError("node_gradients: the graph was already freed by a backward pass; "
                           "trace it before calling backward, or pass retain_graph=True")
    leaves = [t for t in tensors if t._node is None and t.requires_grad]
    saved = [t.grad for t in leaves]
    out = {}

    def recorder(t):
        def record(g):
            out[id(t)] = g.copy()
        return record

    handles = [t.register_hook(recorder(t)) for t in ops]
    try:
        for t in leaves:
            t.grad = None
        root.backward(grad, retain_graph=True)
        out.update({id(t): t.grad for t in leaves if t.grad is not None})
    finally:
        for handle in handles:
            handle.remove()
        for t, g in zip(leaves, saved):
            t.grad = g
    return out


def _check_names(names):
    """``names`` as a dict ``id(tensor) -> name``: anything else is refused (TypeError), since a
    dict keyed by the tensors themselves, ``{x: "x"}``, would match no node and name nothing."""
    if names is None:
        return {}
    if not isinstance(names, Mapping):
        raise TypeError(f"trace_graph: names must be a dict id(tensor) -> name, got {type(names).__name__}")
    for key, name in names.items():
        if isinstance(key, bool) or not isinstance(key, int) or not isinstance(name, str):
            raise TypeError(f"trace_graph: names must map id(tensor) to a name, e.g. {{id(x): 'x'}}; "
                            f"got {type(key).__name__} -> {type(name).__name__}")
    return dict(names)


def trace_graph(root, names=None, grad=False):
    """The Graph of ``root`` (a Tensor that an op made, e.g. a loss).

    ``names`` maps ``id(tensor)`` to a display name (``parameter_names(model)``,
    plus e.g. ``{id(x): "x"}``); unnamed leaves show as "param" or "const". With ``grad=True`` the
    nodes carry the norm of d root / d tensor (see ``node_gradients``; ``root`` must be a
    one-element tensor then), computed without changing any ``.grad``.
    """
    if not isinstance(root, Tensor):
        raise TypeError(f"trace_graph: expected a Tensor, got {type(root).__name__}")
    if grad and root.size != 1:
        raise ValueError(f"trace_graph(grad=True): root has shape {root.shape}; the gradients are "
                         "those of a one-element root (a loss): trace its sum, or pass grad=False")
    if grad and not root.requires_grad:
        raise ValueError("trace_graph(grad=True): root does not require grad (no input had "
                         "requires_grad=True, or it was made under no_grad): no gradient reaches a node")
    names = _check_names(names)
    tensors = _walk(root)
    if any(t._node is not None and t._node.ctx is None for t in tensors):
        raise RuntimeError("trace_graph: the graph was already freed by a backward pass (its inputs "
                           "are gone); trace before calling backward, or pass retain_graph=True")
    ids = {id(t): f"n{i}" for i, t in enumerate(tensors)}
    grads = node_gradients(root) if grad else {}
    nodes, edges = [], []
    for t in tensors:
        if t._node is not None:
            kind, op = "op", t._node.fn.__name__
        else:
            kind = "param" if t.requires_grad else "input" if id(t) in names else "const"
            op = ""
        name = names.get(id(t))
        if kind == "const" and t.size == 1:
            name = f"const {t.item():.6g}"
        g = grads.get(id(t))
        nodes.append(Node(id=ids[id(t)], kind=kind, op=op, shape=tuple(t.shape), dtype=str(t.dtype),
                          name=name, root=t is root,
                          grad_norm=None if g is None else _norm(g)))
        if t._node is not None:
            edges.extend((ids[id(inp)], ids[id(t)]) for inp in t._node.inputs)
    return Graph(nodes=nodes, edges=edges, tensors={ids[id(t)]: t for t in tensors})


def _quote(text):
    """A DOT double-quoted string (backslashes, quotes and newlines escaped)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(graph, title=None, rankdir="BT"):
    """The Graph as Graphviz DOT text: one ``nK [label=...]`` line per node, one ``nA -> nB``
    line per edge (data flows from A into the op that made B); inputs at the bottom by default.
    ``rankdir`` is one of Graphviz's directions, TB, BT, LR or RL (ValueError otherwise).
    """
    if rankdir not in RANKDIRS:
        raise ValueError(f"to_dot: rankdir must be one of {', '.join(RANKDIRS)}, got {rankdir!r}")
    lines = ["digraph minivae {", f"  rankdir={rankdir};",
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
             '  edge [arrowsize=0.6];']
    if title:
        lines.append(f"  label={_quote(title)};")
        lines.append("  labelloc=t;")
    for n in graph.nodes:
        color = COLORS["root"] if n.root else COLORS[n.kind]
        shape = {"op": "box", "param": "ellipse", "input": "ellipse", "const": "note"}[n.kind]
        extra = ", penwidth=2" if n.root else ""
        lines.append(f"  {n.id} [label={_quote(n.label())}, shape={shape}, fillcolor={_quote(color)}{extra}];")
    for src, dst in graph.edges:
        lines.append(f"  {src} -> {dst};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def svg_available():
    """True when DOT can be rendered to SVG here (Graphviz's ``dot`` program is on the PATH; the
    ``graphviz`` Python package, when installed, drives the same program)."""
    return shutil.which("dot") is not None


def render_svg(dot_text):
    """SVG text of ``dot_text`` rendered by Graphviz (the Python package when installed, else the
    ``dot`` program); RuntimeError when neither is available."""
    if shutil.which("dot") is None:
        raise RuntimeError("rendering SVG needs Graphviz's `dot` program (e.g. apt-get install graphviz; "
                           "pip install graphviz for the Python bindings)")
    try:
        import graphviz
    except ImportError:
        done = subprocess.run(["dot", "-Tsvg"], input=dot_text.encode(), capture_output=True, check=True)
        return done.stdout.decode()
    return graphviz.Source(dot_text).pipe(format="svg").decode()


def model_loss_graph(model, x, noise, grad=False, title=None):
    """Trace one evaluation of ``model.loss(x, noise)``: returns ``(graph, dot text)``.

    Parameters are named by their dotted names and ``x`` is shown as "x"; with ``grad=True``
    every node carries its gradient norm (the parameters' ``.grad`` are left untouched).
    """
    from .autograd import tensor

    x = x if isinstance(x, Tensor) else tensor(x)
    loss, _ = model.loss(x, noise)
    names = parameter_names(model)
    names[id(x)] = "x"
    graph = trace_graph(loss, names=names, grad=grad)
    return graph, to_dot(graph, title=title)
