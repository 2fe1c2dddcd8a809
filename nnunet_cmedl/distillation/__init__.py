"""Knowledge distillation from the MRI teacher into the CT student: the hint loss (``hint.py``)."""
