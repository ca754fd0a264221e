"""hcsshim for Python: containerd shims that run containers inside utility VMs."""

__version__ = "0.1.0"
