"""hcsshim.oci"""
