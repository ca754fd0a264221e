"""`tar2ext4 -i layer.tar -o layer.vhd [-vhd] [-inline] [-overlay]`: upstream's flags, also with `--`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tar2ext4", description="convert a tar (OCI layer) to an ext4 image")
    p.add_argument(
        "-i", "--input", default="-", help="input tar (default: stdin); gzip/bzip2/xz are detected"
    )
    p.add_argument("-o", "--output", required=True, help="output image")
    p.add_argument("-vhd", "--vhd", action="store_true", help="add a fixed VHD footer")
    p.add_argument("-only-vhd", "--only-vhd", action="store_true", help="only append a VHD footer to -o")
    p.add_argument("-inline", "--inline", action="store_true", help="store small files in their inodes")
    p.add_argument(
        "-overlay",
        "--overlay",
        action="store_true",
        default=True,
        help="convert OCI whiteouts to overlayfs ones (the default)",
    )
    p.add_argument("--no-whiteouts", dest="overlay", action="store_false", help="keep .wh. files as they are")
    p.add_argument(
        "-convert-slash", "--convert-slash", action="store_true", help="treat '\\' in names as '/'"
    )
    p.add_argument(
        "--size", type=int, default=None, help="image size in MiB (default: fitted to the content)"
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from hcsshim.layers import tar2ext4, vhd
    from hcsshim.layers.ext4 import Ext4Error

    ns = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if ns.only_vhd:
            size = vhd.append_footer_to_path(ns.output)
            print(f"{ns.output}: VHD footer for {size} bytes", file=sys.stderr)
            return 0
        opts = tar2ext4.Options(
            convert_whiteouts=ns.overlay,
            convert_backslash=ns.convert_slash,
            append_vhd_footer=ns.vhd,
            inline_data=ns.inline,
            size=ns.size * 1024 * 1024 if ns.size else None,
        )
        src = sys.stdin.buffer if ns.input == "-" else ns.input
        r = tar2ext4.convert(src, ns.output, opts)
    except (OSError, tar2ext4.LayerError, Ext4Error, vhd.VhdError) as e:
        print(f"tar2ext4: {e}", file=sys.stderr)
        return 1
    print(
        f"{r.path}: ext4 {r.size} bytes, {r.entries} entries, {r.whiteouts} whiteouts, "
        f"{r.opaque_dirs} opaque dirs{', VHD footer' if ns.vhd else ''}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
