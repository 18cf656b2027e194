"""Cairn: an incremental, deduplicating backup daemon.

The distribution maps its top-level folders onto this package (store/ -> cairn.store, ...);
this module only holds the version. Dependency direction: store and fsio import neither
daemon nor client; client imports only proto and fsio.
"""

__version__ = "0.1.0"
