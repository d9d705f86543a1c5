"""Model families, registered by the `architectures` field of config.json."""
