"""Model layers shared by the supported architectures."""
