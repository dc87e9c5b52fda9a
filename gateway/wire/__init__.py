"""Protobuf wire-format fast paths: numba kernels that read OTLP bytes without building objects."""
