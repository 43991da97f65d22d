"""Corral's shared package: the generated corral.v1 API, configuration and the CLI.

The components live beside it: `controlplane`, `edge` and `agent`. They import this package,
never each other.
"""

__version__ = "0.1.0"
