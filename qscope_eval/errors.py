"""Small exception classes. Every message says what went wrong and how to fix it.

The CLI turns any QScopeError into one line on stderr and a non-zero exit;
anything else is a bug and keeps its traceback.
"""


class QScopeError(Exception):
    """Base class for errors caused by user input or environment."""


class SuiteError(QScopeError):
    """The suite file is malformed or names something that does not exist."""


class SourceError(QScopeError):
    """A benchmark could not be loaded (unknown task, missing file, empty)."""


class ModelError(QScopeError):
    """The model could not be loaded or does not fit the request."""


class SaeError(QScopeError):
    """An SAE file is missing, malformed, unsafe or does not match the model."""


class StoreError(QScopeError):
    """The DuckDB file could not be opened or is not a qscope-eval database."""


class QueryError(QScopeError):
    """User SQL was refused or failed."""


class OutOfMemory(QScopeError):
    """Even a single prompt does not fit on the device."""
