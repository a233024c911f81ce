"""Bridges to other active-learning libraries. ``al.interop.modal``: any registered strategy as a modAL query
strategy."""
