"""jaxae: train (sparse) autoencoders by the thousand, as one jit-compiled JAX program."""

__version__ = "0.1.0"
