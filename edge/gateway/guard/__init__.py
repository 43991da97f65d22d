"""Guardrails: PII and secret detectors, deny rules and site hooks on prompts (see engine)."""
