"""hcsshim.shim"""
