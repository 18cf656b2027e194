"""Namespace of the cairn protobuf packages (cairn.v1)."""
