"""Generated modules of package cairn.v1: cairn_pb2 (messages) and cairn_pb2_grpc (service)."""
