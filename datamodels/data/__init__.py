"""Datasets (digits, CIFAR-10, npz arrays), the examples table, FFCV beton write/read."""
