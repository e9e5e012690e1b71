"""CUDA sources of minivae (``*.cu`` kernels and ``*.cuh`` headers).

Not Python: this file only makes the folder the package ``minivae.kernels`` of an installed
minivae (pyproject maps it from the top-level ``kernels/``), so the sources ship as package
data and ``minivae.gpu`` finds them in ``minivae/kernels/`` beside its own files.
"""
