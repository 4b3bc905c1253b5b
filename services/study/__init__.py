"""`regime3 study modes`: short runs per training mode from one model and seed, and a report."""
