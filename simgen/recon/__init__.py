"""Reconstruction builders (fusion, neural) and their shared output layout."""
