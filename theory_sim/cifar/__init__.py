"""CIFAR-10/100 WideResNet pipeline for the SAM family [F21, K21, T24].

Model (``wrn``), data (``data``), run configuration (``config``), run directory and resume (``checkpoint``), device /
DDP / Slurm (``distributed``), file errors (``errors``), the training loop and CLI verb ``cifar`` (``train``), study
plumbing (``study``).

Nothing here downloads anything: the loader reads the standard python pickle archives from a local directory.
"""
