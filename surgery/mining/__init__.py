"""Corpora in, kept ids and importance scores out."""
