"""hcsshim.cli"""
