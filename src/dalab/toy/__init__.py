"""Toy problems that run in seconds: the two-moons picture of the DANN paper."""
