"""Unpaired MRI: ingest MRI volumes of other patients onto a planned CT configuration, and load random patches."""
