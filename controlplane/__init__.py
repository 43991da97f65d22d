"""The control plane: agents report here, state lives in a store, edges get snapshots."""

from controlplane.errors import ControlPlaneError
from controlplane.server import serve

__all__ = ["ControlPlaneError", "serve"]
