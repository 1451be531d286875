"""Scan, convolution and linear primitives: pure-PyTorch references plus fused kernels where present."""
