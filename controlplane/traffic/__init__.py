"""The cluster-wide traffic view: edges' summaries stored per time bucket, merged on request."""
