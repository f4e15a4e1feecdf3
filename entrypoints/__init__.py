"""Thin command-line mains. Importing this package first silences the dependencies' start-up noise (``quiet.py``),
so every entrypoint that imports from it, before ``lightning_modules`` pulls in compressai, starts clean."""

from entrypoints.quiet import silence_dependency_noise

silence_dependency_noise()
