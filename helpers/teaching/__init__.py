"""Aids for the notebooks: sizing (gpu_sizes), ..."""
