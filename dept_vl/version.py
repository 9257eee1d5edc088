"""The installed dept_vl version (written into every saved adapter and backbone)."""

__version__ = "0.1.0"
