"""hcsshim.hcs"""
