"""Encoders: names -> configs (registry, no torch), weights, the modules and their preprocessing,
how a built encoder runs (backends, planner) and the one record -> tensor loader."""
