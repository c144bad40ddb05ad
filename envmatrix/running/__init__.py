"""Running: the engine (the only `docker` import), what a cell container is, the rounds, hosts."""
