"""The error every CLI turns into one line on stderr, and the helpers that make that line (defined in
``mri_unpaired``, the lower layer)."""
from mri_unpaired.errors import UserInputError, first_line, itk_message

__all__ = ["UserInputError", "first_line", "itk_message"]
