"""The control plane's read-only web dashboard (docs/OBSERVABILITY.md)."""
