"""hcsshim.guest"""
