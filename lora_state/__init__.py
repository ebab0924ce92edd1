"""LoRA State: keep a model's weights equal to exactly the requested LoRA stack.

    from lora_state import LoraStateManager
    manager = LoraStateManager(module, mode="auto")
    report = manager.reconcile([("a.safetensors", 0.8), ("b.safetensors", 1.0)])
    manager.applied; manager.verify(); manager.reset()
"""
from .errors import (BackupBudgetError, ExternalChangeError, LoraFileError, LoraShapeError, LoraStateError,
                     ReconcileAborted, StackError, UnownedStorageError)
from .files import LoraFileCache
from .hosts import Host, TorchModuleHost
from .ledger import AppliedLora, StackEntry
from .manager import LoraStateManager, ReconcileReport, VerifyReport, ulp_distance

__all__ = ["LoraStateManager", "ReconcileReport", "VerifyReport", "StackEntry", "AppliedLora", "Host",
           "TorchModuleHost", "LoraFileCache", "LoraStateError", "LoraFileError", "LoraShapeError", "StackError",
           "BackupBudgetError", "ExternalChangeError", "ReconcileAborted", "UnownedStorageError", "ulp_distance"]
__version__ = "0.1.0"
