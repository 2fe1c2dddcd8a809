"""Distillation from the MRI teacher into the CT student: the teacher (``teacher.py``), the hint (``hint.py``)."""
