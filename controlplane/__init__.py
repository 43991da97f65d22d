"""The control plane: agents report here, state lives in a store, edges get snapshots."""
