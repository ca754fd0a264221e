"""hcsshim.ttrpc"""
