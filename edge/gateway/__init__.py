"""The gateway layer: keys and teams, usage, limits and budgets, cache and guardrails."""
