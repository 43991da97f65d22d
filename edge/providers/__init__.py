"""Hosted providers and credentials at the edge (issue 14).

- `upstream`: the headers each backend gets (its credential, resolved on this edge) and
  whether it is routable from here at all (a missing credential: no).
- `hosted`: one boundary for every provider quirk: URL layout per provider type, the
  Anthropic translation (chat completions to and from Messages, in `anthropic_out`), error
  bodies into the client's dialect, Retry-After, a TLS connection pool per provider.
- `fallbacks`: fallback chains per model or alias.
"""
