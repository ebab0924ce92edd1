"""Errors raised by LoRA State. Each message names the file/key involved and says what to do."""


class LoraStateError(Exception):
    """Base class: nothing was changed when one of these is raised from reconcile()/reset()."""


class LoraFileError(LoraStateError):
    """A LoRA file cannot be read (missing, pickled, corrupt, non-finite values)."""


class LoraShapeError(LoraStateError):
    """A LoRA key resolves to a parameter whose shape it does not fit."""


class StackError(LoraStateError):
    """The requested stack itself is invalid (bad strength, bad entry)."""


class BackupBudgetError(LoraStateError):
    """Exact mode needs more backup memory than the configured budget allows."""


class ExternalChangeError(LoraStateError):
    """Managed weights were changed behind the manager's back."""


class ReconcileAborted(LoraStateError):
    """The reconcile was interrupted or failed while writing and was rolled back."""


class UnownedStorageError(LoraStateError):
    """A weight LoRA State would write lives in memory it does not own (read-only or file-backed)."""
