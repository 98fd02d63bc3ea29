"""Carrier tracking clients behind one small interface (base.py), one module per protocol."""
