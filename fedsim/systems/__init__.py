"""Systems heterogeneity: a deterministic virtual clock for clients' compute, traffic and
availability (``[systems]``; docs/async.md)."""
