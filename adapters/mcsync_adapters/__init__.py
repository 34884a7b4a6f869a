"""Built-in mcsync adapters; each registers under the `mcsync.adapters` entry point group."""
