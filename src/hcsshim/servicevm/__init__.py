"""Service VMs: the tar -> ext4 step of a layer (untrusted content) parsed inside a utility VM.

``GlobalServiceVMConverter`` (one VM for all conversions) and ``PerInstanceServiceVMConverter`` (one
VM per conversion) implement hcsshim.layers.convert.LayerConverter; the snapshotter daemon picks one
with ``--convert-in``. Above uvm: it boots UVMs, so the snapshotter never imports it."""
