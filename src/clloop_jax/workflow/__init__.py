"""Running studies: the experiment configuration, run folders and their lock, the command line, the
persistent compilation cache and sharding over devices.

Importing this package imports nothing else, so the command line starts without loading JAX.
"""
