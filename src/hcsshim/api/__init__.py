"""Generated protobuf modules and the .proto sources they come from (written by us from the published
field numbers). Regenerate with ``python -m hcsshim.api.generate`` (``make generate``); never edit the
``*_pb2.py``/``*_pb2.pyi`` files by hand. Type URLs for ``Any`` are the bare full proto names
(``message.DESCRIPTOR.full_name``), as containerd's typeurl expects."""
