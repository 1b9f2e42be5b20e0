"""The asyncio shell around the sans-IO protocol layers: listener, Noise/HTTP/2, handlers."""
