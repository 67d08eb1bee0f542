"""Therapist inference: prompt format, chat backends, therapist strategies and the safety layer.

`inference` imports no other project package (ARCHITECTURE §2).
"""
