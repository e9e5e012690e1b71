"""Make the two pictures of docs/: the graph of a VAE's loss and the gradient norms of a short run.

    .venv/bin/python tools/gen_doc_pictures.py [--steps 300] [--every 10]

* ``docs/vae_graph.svg``: ``minivae graph``'s output for the default MNIST VAE (784-512-256-50) at
  its initial weights, on 16 binarized MNIST test images, every node labelled with its gradient
  norm (``minivae.docs.write_vae_graph``, also run by ``python -m minivae.docs --graph``). Needs
  Graphviz's ``dot`` program (e.g. ``apt-get install graphviz``).
* ``docs/grad_norms.png``: a short real training run (Adam, lr 1e-3, batch 100, the trainer's
  defaults) with ``minivae.trace.gradient_norms`` and ``update_ratios`` logged every ``--every``
  steps, drawn by ``minivae.viz.plot_grad_norms``. The script prints the first and last logged
  losses and ``latent_summary`` on 2000 validation images at the end.

Needs MNIST (``minivae train`` fetches and caches it) and matplotlib. Takes about a minute on a CPU.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from minivae import nn, optim  # noqa: E402
from minivae.autograd import tensor  # noqa: E402
from minivae.data import MinibatchLoader, binarize_eval, load_mnist  # noqa: E402
from minivae.docs import write_vae_graph  # noqa: E402
from minivae.models import VAE  # noqa: E402
from minivae.random import Generator  # noqa: E402
from minivae.trace import gradient_norms, latent_summary, snapshot, update_ratios  # noqa: E402
from minivae.viz import plot_grad_norms  # noqa: E402


def training_picture(data, out, steps, every):
    """Train the default VAE for ``steps`` steps, tracing every ``every``; plot to ``out``."""
    nn.init.manual_seed(0)
    model = VAE()
    optimizer = optim.Adam(model.parameters(), lr=1e-3)
    noise = Generator(seed=0)
    loader = MinibatchLoader(data.x_train, 100, seed=0)
    records, step, epoch = [], 0, 0
    while step < steps:
        for xb in loader.epoch(epoch):
            loss, stats = model.loss(tensor(xb), noise)
            model.zero_grad()
            loss.backward()
            if step % every == 0:
                before = snapshot(model)
            optimizer.step()
            if step % every == 0:
                records.append({"step": step, "loss": stats["loss"], **gradient_norms(model),
                                **update_ratios(before, model)})
            step += 1
            if step >= steps:
                break
        epoch += 1
    summary = latent_summary(model, binarize_eval(data.x_valid, "valid")[:2000])
    plot_grad_norms(records, out)
    return records, summary


def main(argv=None):
    """Write docs/vae_graph.svg and docs/grad_norms.png."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=10)
    args = parser.parse_args(argv)
    data = load_mnist(verbose=False)
    print(write_vae_graph(ROOT / "docs" / "vae_graph.svg"))
    records, summary = training_picture(data, ROOT / "docs" / "grad_norms.png", args.steps, args.every)
    print(ROOT / "docs" / "grad_norms.png")
    print(json.dumps({"first": records[0]["loss"], "last": records[-1]["loss"], **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
