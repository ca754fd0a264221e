"""hcsshim.gcs"""
