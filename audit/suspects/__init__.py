"""Suspect models under audit: ``base`` (the interface), ``loader`` (files), ``http`` (endpoints).

Nothing is imported here on purpose: each loader pulls in its own heavy library (torch, onnxruntime,
skops) only when a suspect of that format is loaded.
"""
