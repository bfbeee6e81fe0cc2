"""The universal recommendation model: backbone, item fusion, set-out head, verbalisers, index, training."""
