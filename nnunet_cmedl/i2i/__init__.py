"""Unpaired image-to-image translation (CT <-> MRI): networks (``networks.py``) and losses (``losses.py``)."""
