"""Checkpoints as one ``.npz`` file: arrays by name plus a JSON document, written atomically.

No pickle anywhere: arrays are read with ``allow_pickle=False`` and everything else (epoch,
config, RNG and optimizer counters) is JSON stored as a string array, so loading a checkpoint
from elsewhere can never run code. The file is written to a temporary name in the same folder
and moved over the old one with ``os.replace``, so an interruption leaves either the old or the
new checkpoint, never half of one.
"""
import json
import tokenize
import zipfile
from pathlib import Path

import numpy as np

from .files import atomic_write

META_KEY = "__meta__"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not fit the model it is loaded into."""


def save(path, arrays, meta):
    """Write ``arrays`` (name -> ndarray) and ``meta`` (JSON-able dict) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if META_KEY in arrays:
        raise ValueError(f"{META_KEY!r} is reserved for the JSON document")
    payload = {name: np.asarray(a) for name, a in arrays.items()}
    payload[META_KEY] = np.array(json.dumps(meta))
    atomic_write(path, lambda f: np.savez(f, **payload))


def load(path):
    """Read a checkpoint written by ``save``; return (arrays, meta)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    if not zipfile.is_zipfile(path):  # np.load would try it as a pickle and suggest allow_pickle
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupt: it is not a checkpoint "
                              "(an .npz zip archive), or only the start of one")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {name: f[name] for name in f.files}
        if META_KEY not in arrays:
            raise CheckpointError(f"checkpoint {path} holds arrays but no {META_KEY} document: it was "
                                  "not written by minivae")
        meta = json.loads(str(arrays.pop(META_KEY)))
    # A cut-off or damaged file fails deep inside zipfile or NumPy's header parser, with
    # whatever error that layer raises; all of them mean the same thing here.
    except (OSError, ValueError, KeyError, EOFError, SyntaxError, NotImplementedError,
            zipfile.BadZipFile, tokenize.TokenError) as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupt: {exc}") from exc
    return arrays, meta


def split_prefix(arrays, prefix):
    """The entries of ``arrays`` whose names start with ``prefix``, with the prefix removed."""
    return {name[len(prefix):]: a for name, a in arrays.items() if name.startswith(prefix)}
