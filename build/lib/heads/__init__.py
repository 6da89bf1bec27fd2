"""Fusion and classifier heads trained on cached features."""
