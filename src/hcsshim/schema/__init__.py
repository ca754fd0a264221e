"""hcsshim.schema"""
