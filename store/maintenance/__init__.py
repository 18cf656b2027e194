"""Maintenance: what keeps a repository sound and small, over trees, sets and content.

Check (check.py), retention policies (retention.py), garbage collection in two phases
(prune.py), and copying sets between repositories (copy.py). Imports the layers below it,
never the repository facade above it.
"""
