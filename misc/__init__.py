"""Generic building blocks shared by every step and method (imports nothing above it)."""
