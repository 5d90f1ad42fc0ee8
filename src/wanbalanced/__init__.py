"""wanbalanced: keeps a Linux TEQL link equalizer healthy over several WAN lines."""

__version__ = "0.1.0"
