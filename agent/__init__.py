"""The agent: runs beside one inference server, probes it and reports to the control plane."""
