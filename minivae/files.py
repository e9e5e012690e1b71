"""Atomic file writes: readers see the old file or the complete new one, never part of one.

The bytes go to a temporary file in the same folder, are flushed to the disk (``fsync``), and the
file is then moved over the old one with ``os.replace``, which is atomic within one file system.
A failure (or an interrupt) on the way removes the temporary file and leaves the old file as it
was. Checkpoints, the JSON files of a run and the MNIST cache are all written this way.
"""
import os
import tempfile
from pathlib import Path


def atomic_write(path, write):
    """Replace the file ``path`` atomically by what ``write(f)`` writes into a binary file ``f``.

    The file gets the permissions a plain ``open`` would give it (0666 less the process's
    umask): the temporary file is made private (0600), and ``os.replace`` keeps its mode.
    Exceptions (OSError of a full disk or a read-only folder, KeyboardInterrupt) propagate after
    the temporary file is removed.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _umask():
    """The process's umask (Python can read it only by setting it, so it is set back at once)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask
