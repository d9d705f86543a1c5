"""The inference engine: scheduler, paged KV cache, model runner and offline API."""
