"""hcsshim.uvm"""
