"""The error every CLI turns into one line on stderr, and the helpers that make that line (defined in
``mri_unpaired``, the lower layer); ``UnsupportedSetup``, the one-line stop of a trainer that cannot work with the
plans' network or configuration."""
from mri_unpaired.errors import UserInputError, first_line, itk_message

__all__ = ["UnsupportedSetup", "UserInputError", "first_line", "itk_message"]


class UnsupportedSetup(SystemExit):
    """A network or configuration a trainer cannot work with; the message names it and what is missing.

    A SystemExit (like the trainer's TrainingStopped): raised while the trainer initialises, the stock
    ``nnUNetv2_train`` prints the message as one line, without a traceback, and exits with status 1."""
