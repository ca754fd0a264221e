"""The UVM image builder (`hcsshim uvm build`): Debian packages -> kernel, initrd.img, rootfs.vhd.

``builder`` drives the build and checks an image; ``dependencies`` resolves what goes in (kernel
modules, ELF libraries, the agent's Python imports); ``init_script`` is the UVM's /init; ``cpio``
writes the initramfs. A build tool, not part of the runtime: nothing the shim or a UVM runs imports
this package (tests/unit/test_import_rules.py holds that).
"""
