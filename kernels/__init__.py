"""Triton kernels, installed as `taskadapter_fast.kernels`."""
