"""hcsshim.layers"""
