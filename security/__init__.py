"""Workload identity for the mesh: SPIFFE-style IDs, the mesh CA, mutual TLS on every
gRPC link, and who may call what.
"""
