"""Checkpoints as one ``.npz`` file: arrays by name plus a JSON document, written atomically.

No pickle anywhere: arrays are written and read with ``allow_pickle=False`` and everything else
(epoch, config, RNG and optimizer counters) is JSON stored as a string array, so loading a
checkpoint from elsewhere can never run code. The file is written to a temporary name in the
same folder and moved over the old one with ``os.replace``, so an interruption leaves either the
old or the new checkpoint, never half of one.
"""
import json
import math
import tokenize
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .autograd import Tensor
from .files import atomic_write, write_npz

META_KEY = "__meta__"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not fit the model it is loaded into."""


def save(path, arrays, meta):
    """Write ``arrays`` (str name -> NumPy array or array-like) and ``meta`` (JSON-able dict) to
    ``path`` atomically.

    Raises TypeError for a name that is not a string or a value that is a Tensor, and ValueError
    for a value that NumPy could store only as a pickle (a dict, None, a ragged list), naming
    the array, before anything is written: the old checkpoint then stays as it was.
    """
    path = Path(path)
    if META_KEY in arrays:
        raise ValueError(f"{META_KEY!r} is reserved for the JSON document")
    payload = {name: _plain_array(name, value) for name, value in arrays.items()}
    payload[META_KEY] = np.array(json.dumps(meta))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: write_npz(f, payload))


def _plain_array(name, value):
    """``value`` as a NumPy array that can be stored without pickle, or an error naming ``name``."""
    if not isinstance(name, str):
        raise TypeError(f"checkpoint array names must be strings, got {name!r}")
    if isinstance(value, Tensor):
        raise TypeError(f"{name}: a {type(value).__name__}, not an array: pass its .numpy() "
                        "(or a module's state_dict(), which holds arrays)")
    try:
        array = np.asarray(value)
    except ValueError as exc:  # a ragged list
        raise ValueError(f"{name}: {exc}") from exc
    if array.dtype.hasobject:
        raise ValueError(f"{name}: a {type(value).__name__} that becomes an object array, which "
                         "could only be stored as a pickle; pass an array of numbers or strings")
    return array


def load(path):
    """Read a checkpoint written by ``save``; return (arrays, meta)."""
    return _read(path, document_only=False)


def load_document(path):
    """Read only the JSON document of the checkpoint at ``path``, as ``load`` returns it (its
    ``meta``), with ``load``'s checks on that member alone: its arrays are left unread."""
    return _read(path, document_only=True)[1]


def _read(path, document_only):
    """(arrays, meta) of the checkpoint at ``path``: every array, or none with ``document_only``."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    if not path.is_file():
        raise CheckpointError(f"{path} is a folder (or another non-file), not a checkpoint file")
    try:  # is_zipfile below would take an unreadable file for a corrupt one
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    if not zipfile.is_zipfile(path):  # np.load would try it as a pickle and suggest allow_pickle
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupt: it is not a checkpoint "
                              "(an .npz zip archive), or only the start of one")
    try:
        with zipfile.ZipFile(path) as archive:
            members = [info for info in archive.infolist()
                       if not document_only or info.filename == f"{META_KEY}.npy"]
            _check_array_sizes(path, archive, members)
        with np.load(path, allow_pickle=False) as f:
            if META_KEY not in f.files:
                raise CheckpointError(f"checkpoint {path} holds arrays but no {META_KEY} document: it "
                                      "was not written by minivae")
            arrays = {name: f[name] for name in ([META_KEY] if document_only else f.files)}
        meta = json.loads(str(arrays.pop(META_KEY)))
    # A cut-off or damaged file fails deep inside zipfile or NumPy's header parser, with
    # whatever error that layer raises; all of them mean the same thing here. (zlib.error: a
    # damaged member of a compressed .npz, as np.savez_compressed writes.)
    except (OSError, ValueError, KeyError, EOFError, SyntaxError, NotImplementedError,
            zipfile.BadZipFile, tokenize.TokenError, zlib.error) as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupt: {exc}") from exc
    return arrays, meta


def _check_array_sizes(path, archive, members):
    """Refuse (CheckpointError naming ``path``) one of the ``members`` (ZipInfo) of the
    checkpoint's zip ``archive`` whose .npy header describes another number of bytes than the
    member holds, counted by reading it a chunk at a time.

    np.load allocates the array that a header describes before it reads a byte of its data (the
    zip's CRC is checked only once the data is read), so a damaged or crafted header of shape
    (10**12,) raised MemoryError, naming no file. Nor can the size that the zip's directory gives
    a member be compared instead: it too is checked only as the member is read.
    """
    for info in members:
        with archive.open(info) as member:
            header = _npy_header(member)
            # No .npy file: np.load gives its bytes as they are; pickled objects: np.load refuses
            # them by name (allow_pickle=False), and their bytes are no array's anyway.
            if header is None or header[1].hasobject:
                continue
            shape, dtype = header
            held = 0
            while chunk := member.read(1 << 20):
                held += len(chunk)
        described = math.prod(shape) * dtype.itemsize
        if held != described:
            raise CheckpointError(f"checkpoint {path} is unreadable or corrupt: {info.filename} describes an "
                                  f"array of shape {shape} and dtype {dtype} ({described} bytes) but holds "
                                  f"{held} bytes")


def _npy_header(member):
    """(shape, dtype) of the .npy header that ``member`` (a file open at its start) begins with,
    leaving it at the array's data; None for a member that is no .npy file."""
    prefix = np.lib.format.MAGIC_PREFIX
    if member.read(len(prefix)) != prefix:
        return None
    member.seek(0)  # read_magic reads the prefix again, and the version after it
    version = np.lib.format.read_magic(member)
    # Version 3.0 differs from 2.0 only in the header's text encoding (UTF-8, for field names),
    # which changes no size; np.load refuses the versions after it.
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(member)
    else:
        shape, _, dtype = np.lib.format.read_array_header_2_0(member)
    return shape, dtype


def split_prefix(arrays, prefix):
    """The entries of ``arrays`` whose names start with ``prefix``, with the prefix removed."""
    return {name[len(prefix):]: a for name, a in arrays.items() if name.startswith(prefix)}
