"""hcsshim.annotations"""
