"""Small helpers: paths, seeding, statistics."""
