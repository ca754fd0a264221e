"""Generated protobuf modules (see hcsshim.api.generate)."""
