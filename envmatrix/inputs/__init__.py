"""Inputs: the zoo's models and the input tensors, made on the host once for every cell."""
