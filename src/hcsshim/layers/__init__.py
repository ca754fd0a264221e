"""hcsshim.layers: tar -> ext4 images with OCI whiteouts (tar2ext4), fixed VHD footers (vhd), and a
content-addressed layer cache (cache)."""
