"""The built-in defaults, registered as plugins through the same path as third-party ones."""
