"""The agent: runs beside one inference server, probes it and reports to the control plane."""

from agent.errors import AgentError
from agent.service import Agent, serve

__all__ = ["Agent", "AgentError", "serve"]
