"""Atomic file writes (readers see the old file or the complete new one, never part of one),
and the ``.npz`` writer used with them.

The bytes go to a temporary file in the same folder, are flushed to the disk (``fsync``), and the
file is then moved over the old one with ``os.replace``, which is atomic within one file system;
the folder is flushed last, so that the move itself outlasts a crash of the machine.
A failure (or an interrupt) on the way removes the temporary file and leaves the old file as it
was. Checkpoints, the JSON files and pictures of a run and the MNIST cache are all written
this way.
"""
import os
import secrets
import zipfile
from pathlib import Path

import numpy as np


def atomic_write(path, write):
    """Replace the file ``path`` atomically by what ``write(f)`` writes into a binary file ``f``.

    The temporary file is ``<name>.<random>.tmp`` next to ``path``, created with the permissions
    a plain ``open`` gives (0666 less the umask: ``tempfile.mkstemp`` would make it private, and
    ``os.replace`` keeps the mode). Exceptions (OSError of a full disk or a read-only folder,
    KeyboardInterrupt) propagate after the temporary file is removed; an OSError of the temporary
    file, or one that names no file (a write into the open file, its flush or fsync), is raised
    as an OSError of ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(tmp, flags, 0o666)  # O_EXCL: never another file of the same name
    except OSError as exc:  # a folder that does not exist or cannot be written
        raise _error_of_target(exc, path) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        # An error that names another file, or has no errno (its message is its own), stands.
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename in (None, str(tmp)):
            raise _error_of_target(exc, path) from exc
        raise
    _sync_folder(path.parent)


def atomic_write_text(path, text):
    """Replace the file ``path`` by ``text`` (UTF-8) atomically (``atomic_write``)."""
    atomic_write(path, lambda f: f.write(text.encode()))


def _error_of_target(exc, path):
    """The OSError ``exc``, met while writing ``path`` through its temporary file, as an error of
    ``path`` (of the same errno, so of the same class): the user asked for ``path``, and
    ``path.<random>.tmp``, or "No space left on device" naming no file, would not say which of
    their files failed."""
    return OSError(exc.errno, exc.strerror, str(path))


def _sync_folder(folder):
    """Flush ``folder``'s entries to the disk: a file's own ``fsync`` does not cover the entry
    that names it, so without this a crash could bring back the old file after the move. POSIX
    only (Windows cannot open a folder); a file system that cannot sync a folder is left as is."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_npz(f, arrays, compressed=False):
    """Write ``arrays`` (name -> NumPy array) into the binary file ``f`` as a ``.npz`` that
    ``np.load`` reads, member by member as ``np.savez`` does, with two differences: the names are
    data (``np.savez(f, **arrays)`` takes an array named ``file`` or ``allow_pickle`` for its own
    argument of that name), and the members carry a fixed timestamp, so that the bytes are a
    function of the arrays alone. Nothing is pickled: an object array raises ValueError.
    """
    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with zipfile.ZipFile(f, "w", compression=method, allowZip64=True) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = method
            with archive.open(info, "w", force_zip64=True) as member:
                # C order, so that the bytes do not depend on the layout (ascontiguousarray would
                # also make a 0-d array 1-d)
                array = array if array.flags.c_contiguous else np.ascontiguousarray(array)
                np.lib.format.write_array(member, array, allow_pickle=False)
