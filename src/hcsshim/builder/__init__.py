"""hcsshim.builder"""
