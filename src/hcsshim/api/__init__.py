"""hcsshim.api"""
