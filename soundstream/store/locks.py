"""The advisory lock keys every soundstream process agrees on (arbitrary constants)."""

from __future__ import annotations

MIGRATE_LOCK = 0x50_55_4E_44_53_54_52_4D  # applying migrations, for a session
FOLD_LOCK = 0x53_53_46_4F_4C_44  # folding the summary deltas
# Shared by each write batch, exclusive for adding or dropping a day partition.
PARTITION_LOCK = 0x53_53_50_41_52_54
