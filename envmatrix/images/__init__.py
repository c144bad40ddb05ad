"""Images: bases, Dockerfiles rendered from templates, builds by content hash, installed sets."""
