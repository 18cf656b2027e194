"""The Cairn agent (`cairnd`): configuration, change journal, scheduler, quiesce windows,
PostgreSQL capture and the gRPC server, built on `cairn.store`.

The daemon owns the repository on its host; clients reach it only through the API.
"""
