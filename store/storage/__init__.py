"""Storage: where repository objects live, and nothing about what they mean.

The `Backend` protocol (backend.py) and its implementations: a local directory and memory
(backend.py), an S3-compatible bucket (s3.py), and a wrapper that injects faults into any
method (faults.py). This layer imports nothing of the store above it.
"""
